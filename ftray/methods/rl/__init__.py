"""`rl`: PPO fine-tuning with RLlib (config.py: its spec section; the RLlib code is `ftray.rl`)."""
