"""`grpo`: group-relative policy optimisation with verifiable rewards (config.py, rewards.py, hooks.py)."""
