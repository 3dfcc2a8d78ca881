"""`lora`: low-rank adapters through peft (config.py: its spec section; hooks.py: the adapters)."""
