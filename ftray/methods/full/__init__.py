"""`full`: every parameter trains (config.py: its spec section; hooks.py: its training hooks)."""
