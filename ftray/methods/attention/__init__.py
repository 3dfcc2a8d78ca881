"""`attention`: only the attention projections train, directly or through LoRA (config.py, hooks.py)."""
