"""Talking to a Ray cluster's HTTP endpoints (job server, state API) with its token.

Token authentication: Ray's own HTTP clients send the cluster's token only when RAY_AUTH_MODE=token
is set in the client's environment; ftray sends it whenever one is available (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), so `ftray submit` and the storage check work against a
`ray start --head` cluster without extra setup.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def auth_headers() -> dict[str, str]:
    """The cluster token as an HTTP header, from where Ray keeps it: RAY_AUTH_TOKEN, the file at
    RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. Empty with RAY_AUTH_MODE=disabled or no token.

    Ray's own HTTP clients attach the token only when RAY_AUTH_MODE=token is set in the client's
    environment. ftray passes the header itself instead of switching this process into token mode,
    which would also change how a later `ray.init` in the same process talks to its cluster."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
        try:
            token = path.read_text().strip()
        except OSError:
            return {}  # no token here: a cluster without token authentication still answers
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def explicit_address(address: str | None) -> Iterator[None]:
    """While a Ray HTTP client (jobs, state API) resolves `address`, make it win.

    Ray's clients let RAY_ADDRESS override an explicit address; RAY_API_SERVER_ADDRESS takes
    precedence over both, so an explicit `--address` is put there for the moment."""
    if not address:
        yield
        return
    previous = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = previous
