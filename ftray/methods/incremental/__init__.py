"""`incremental`: continue an earlier run on new data with replay and EWC (config.py, hooks.py)."""
