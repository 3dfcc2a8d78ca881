"""`simpo`: reference-free preference optimisation on length-normalized log-probs (config.py, hooks.py)."""
