"""`distill`: a frozen teacher's softened outputs guide a student (config.py, hooks.py)."""
