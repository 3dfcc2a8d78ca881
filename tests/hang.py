"""A hang guard for tests: SIGALRM ends a block that runs far longer than it ever should.

Not a speed assertion (the machine is shared and noisy): the limit sits far above normal times,
so only a real loop trips it.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def no_hang(seconds: float, what: str = "the block"):
    """Raise TimeoutError if the block runs longer than `seconds` (main thread only)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"{what} ran longer than {seconds} s: a hang, not a slow machine")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
