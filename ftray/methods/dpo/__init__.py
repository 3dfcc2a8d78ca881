"""`dpo`: direct preference optimisation on (prompt, chosen, rejected) pairs (config.py, hooks.py)."""
