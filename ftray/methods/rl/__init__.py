"""`rl`: PPO fine-tuning (and SAC on continuous actions) with RLlib
(config.py: its spec section; the RLlib code is `ftray.rl`)."""
