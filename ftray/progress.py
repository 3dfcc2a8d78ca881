"""Live progress within an epoch: rank 0 posts where it is, the driver shows it.

Train workers' own prints reach the console only as whole lines through Ray's log forwarding,
prefixed and buffered, so rank 0 does not print its progress: it posts a small record to a `Board`
actor (fire and forget, at most every `post_every_s`), and a thread in the driver (`Display`) reads
it. On a terminal one line updates in place; elsewhere (a Ray job's log, CI) a plain timestamped
line appears every `run.progress_every_s` seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, TextIO

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@dataclass
class Position:
    """Where rank 0 stands in its epoch (its own shard: every rank trains the same number of steps)."""
    epoch: int
    epochs: int
    micro: int  # micro-batches done in this epoch
    micro_total: int  # micro-batches in an epoch (rank 0's shard)
    seen: int  # rows done in this epoch (rank 0)
    tokens: int
    loss: float  # mean training loss so far this epoch
    elapsed_s: float  # since this epoch began
    world: int

    def line(self) -> str:
        """`epoch 2/5  step 120/400 (30%)  loss 0.5120  812 samples/s  ETA 1:05`"""
        rate = self.micro / self.elapsed_s if self.elapsed_s > 0 else 0.0
        left = (self.micro_total - self.micro) + (self.epochs - self.epoch) * self.micro_total
        eta = _clock(left / rate) if rate > 0 else "?"
        speed = (f"{self.tokens * self.world / self.elapsed_s:.0f} tokens/s" if self.tokens
                 else f"{self.seen * self.world / max(self.elapsed_s, 1e-9):.0f} samples/s")
        share = min(100, round(100 * self.micro / self.micro_total)) if self.micro_total else 0
        return (f"epoch {self.epoch}/{self.epochs}  step {self.micro}/{self.micro_total} ({share}%)  "
                f"loss {self.loss:.4f}  {speed}  ETA {eta}")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@ray.remote(num_cpus=0)
class Board:
    """The latest position rank 0 posted (an actor in the driver's Ray, no CPU reserved)."""

    def __init__(self):
        self.position = None
        self.lines: list[str] = []

    def post(self, position: Position) -> None:
        self.position = position

    def latest(self) -> Position | None:
        return self.position

    def say(self, line: str) -> None:
        """A whole line for the driver to print (the controller's epoch line)."""
        self.lines.append(line)

    def said(self, start: int) -> list[str]:
        """The lines said from the `start`-th on."""
        return self.lines[start:]


def board():
    """A `Board` on the driver's own node: the driver reads it to the end of the run, and a worker
    node lost in an elastic or fault-tolerant run must not take the board (and the run) with it."""
    here = ray.get_runtime_context().get_node_id()
    return Board.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()


class Poster:
    """Rank 0's side: `tick` after every micro-batch, posting at most every `every_s` seconds."""

    def __init__(self, board, epochs: int, micro_total: int, world: int, every_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.board, self.epochs, self.micro_total, self.world = board, epochs, micro_total, world
        self.every_s, self.clock = every_s, clock
        self.epoch_started = self.last = 0.0

    def start_epoch(self) -> None:
        self.epoch_started = self.last = self.clock()

    def tick(self, epoch: int, micro: int, seen: int, tokens: int, loss_sum) -> None:
        now = self.clock()
        if now - self.last < self.every_s:
            return
        self.last = now
        loss = float(loss_sum) / seen if seen else float("nan")  # one device sync per post, not per step
        self.board.post.remote(Position(epoch, self.epochs, micro, self.micro_total, seen, tokens, loss,
                                        now - self.epoch_started, self.world))


class Display:
    """The driver's side: a thread that shows the board's latest position until stopped.

    On a terminal (`out.isatty()`) it redraws one line in place every `refresh_s`; otherwise it
    writes a timestamped line every `every_s`, and only when the position moved."""

    def __init__(self, board, every_s: float, out: TextIO | None = None, refresh_s: float = 1.0,
                 positions: bool = True):
        self.board, self.out, self.positions = board, out or sys.stdout, positions
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.every_s = refresh_s if self.tty or not positions else every_s
        self._printed = 0  # lines of `Board.said` printed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ftray-progress", daemon=True)
        self._shown = None

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        self.print_lines()  # the last epoch's line, said after the thread's last look
        if self.tty and self._shown is not None:
            self.out.write("\r\x1b[K")  # clear the live line: the epoch lines stay
            self.out.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.print_lines()
            if self.positions:
                self.show_once()

    def print_lines(self) -> None:
        """Print the whole lines said since the last call (over a live line on a terminal)."""
        try:
            lines = ray.get(self.board.said.remote(self._printed), timeout=10)
        except Exception:  # noqa: BLE001 - a gone board has nothing more to say
            return
        for line in lines:
            self.out.write(f"\r\x1b[K{line}\n" if self.tty else f"{line}\n")
        self._printed += len(lines)
        if lines:
            self._shown = None if self.tty else self._shown  # the live line was overwritten: redraw it
            self.out.flush()

    def show_once(self) -> None:
        """Show the latest position if it moved since the last one shown."""
        try:
            position = ray.get(self.board.latest.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress is cosmetic: a slow or gone board shows nothing
            return
        if position is None or position == self._shown:
            return
        self._shown = position
        if self.tty:
            self.out.write(f"\r\x1b[K[ftray] {position.line()}")
        else:
            self.out.write(f"[ftray] {time.strftime('%H:%M:%S')}  {position.line()}\n")
        self.out.flush()
