"""`transfer`: frozen backbone, a (new) head, optionally the top blocks (config.py, hooks.py)."""
