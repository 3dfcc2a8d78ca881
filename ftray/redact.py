"""Keep secrets given through the environment out of what ftray writes.

Tokens and cloud keys reach ftray as environment variables (HF_TOKEN, AWS_SECRET_ACCESS_KEY,
WANDB_API_KEY, ...). They must never land in `summary.json` or the resolved spec stored in it,
yet they can get there by accident: pasted into a path or a run name, or quoted in an error
message. `redact` replaces every string that contains such a value by "***" before it is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

# Names of environment variables whose values are treated as secrets.
SECRET_NAME = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|CREDENTIAL", re.IGNORECASE)
# Shorter values (`TOKENIZERS_PARALLELISM=false`) are settings, not secrets, and would redact
# ordinary words everywhere.
MIN_SECRET_LENGTH = 8
MASK = "***"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret-looking variables in `environ` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    return sorted({value for name, value in env.items()
                   if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH})


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of `obj` (JSON-like: mappings, lists, tuples, strings, numbers) in which every string,
    value or key, that contains a secret from the environment is replaced by "***"."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return obj

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return MASK if any(s in value for s in secrets) else value
        if isinstance(value, Mapping):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(clean(v) for v in value)
        return value

    return clean(obj)
