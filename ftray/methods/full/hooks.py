"""`full`: every parameter trains (the base hooks as they are)."""

from ftray.methods.base import Method


class Full(Method):
    pass


HOOKS = Full  # what `MethodConfig.hooks` finds beside the config
