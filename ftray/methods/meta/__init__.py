"""`meta`: Reptile / first-order MAML over tasks (config.py: its spec section; hooks.py: the loop)."""
