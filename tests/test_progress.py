"""Live progress within an epoch (`ftray.progress`): the line's figures, rank 0's throttled posts
to a real Board actor under a fake clock, the driver's display on a terminal (one line redrawn in
place) and off one (timestamped lines), and a real run whose captured stdout shows the steps of an
epoch advancing before the epoch ends."""

from __future__ import annotations

import io
import re

import pyarrow.parquet as pq
import ray
import pytest

from ftray import cli
from ftray.progress import Board, Display, Poster, Position
from tests.conftest import blobs, mlp_spec, write_spec


def test_the_line_states_step_share_loss_speed_and_eta():
    # 100 of 400 micro-batches in 20 s: 5 a second; left: 300 in this epoch + 3 more epochs of 400.
    p = Position(epoch=2, epochs=5, micro=100, micro_total=400, seen=800, tokens=0, loss=0.51234,
                 elapsed_s=20.0, world=2)
    assert p.line() == "epoch 2/5  step 100/400 (25%)  loss 0.5123  80 samples/s  ETA 5:00"
    long = Position(1, 10, 1, 1000, 8, 4096, 2.0, 10.0, 1)  # 0.1 steps/s, 9999 left: 99990 s
    assert long.line().endswith("loss 2.0000  410 tokens/s  ETA 27:46:30")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rank_0_posts_at_most_every_interval(ray_session):
    board, clock = Board.remote(), FakeClock()
    poster = Poster(board, epochs=3, micro_total=50, world=1, every_s=0.5, clock=clock)
    poster.start_epoch()
    for micro in range(1, 5):  # steps 0.125 s apart: 0.5 s is reached at the 4th
        clock.now += 0.125
        poster.tick(1, micro, micro * 4, 0, float(micro * 4))
        latest = ray_session.get(board.latest.remote())
        assert (latest is None) == (micro < 4), micro
    assert latest == Position(1, 3, 4, 50, 16, 0, 1.0, 0.5, 1)
    clock.now += 0.25
    poster.tick(1, 5, 20, 0, 20.0)  # too soon after the last post: the board keeps step 4
    assert ray_session.get(board.latest.remote()).micro == 4


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_display_redraws_in_place_on_a_terminal_and_writes_lines_elsewhere(ray_session, tty):
    board = Board.remote()
    out = Terminal() if tty else io.StringIO()
    display = Display(board, every_s=30.0, out=out)
    assert display.every_s == (1.0 if tty else 30.0)
    display.show_once()  # nothing posted yet: nothing shown
    for micro in (10, 10, 20):  # the same position twice is shown once
        ray_session.get(board.post.remote(Position(1, 2, micro, 40, micro * 8, 0, 0.25, micro / 10, 1)))
        display.show_once()
    text = out.getvalue()
    first = "epoch 1/2  step 10/40 (25%)  loss 0.2500  80 samples/s  ETA 0:07"
    second = "epoch 1/2  step 20/40 (50%)  loss 0.2500  80 samples/s  ETA 0:06"
    if tty:
        assert text == f"\r\x1b[K[ftray] {first}\r\x1b[K[ftray] {second}"
    else:
        lines = text.splitlines()
        assert [line[18:] for line in lines] == [first, second]
        assert all(re.fullmatch(r"\[ftray\] \d\d:\d\d:\d\d  ", line[:18]) for line in lines), lines


def test_a_run_shows_its_steps_advancing_within_an_epoch(ray_session, tmp_path, capsys):
    pq.write_table(blobs(4000, seed=1), tmp_path / "d.parquet")
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path / "runs", "live", train={"epochs": 1, "batch_size": 4})
    raw["run"]["progress_every_s"] = 0.2
    assert cli.main(["run", str(write_spec(tmp_path / "s.yaml", raw))]) == 0
    out = capsys.readouterr().out
    total = -(-3200 // 4)  # 3200 training rows (val_fraction 0.2) in micro-batches of 4, one worker
    steps = [int(m.group(1)) for m in re.finditer(rf"\[ftray\] \d\d:\d\d:\d\d  epoch 1/1  step (\d+)/{total} ", out)]
    # At least two positions inside the epoch, advancing (the epoch line comes after them).
    assert len(steps) >= 2 and steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] <= total, out


@pytest.mark.parametrize("tty", [True, False])
def test_display_prints_the_lines_said_on_the_board_once_each(ray_session, tty):
    board = Board.remote()
    out = Terminal() if tty else io.StringIO()
    display = Display(board, every_s=30.0, out=out, positions=False)
    for line in ("[ftray] epoch 1/2  a", "[ftray] epoch 2/2  b"):
        ray_session.get(board.say.remote(line))
        display.print_lines()
        display.print_lines()  # nothing new said: nothing printed
    prefix = "\r\x1b[K" if tty else ""  # over the live line on a terminal
    assert out.getvalue() == f"{prefix}[ftray] epoch 1/2  a\n{prefix}[ftray] epoch 2/2  b\n"


def test_an_epoch_line_is_printed_when_the_board_is_gone(ray_session, tmp_path, capsys):
    # The controller's epoch callback must never fail a run over the console: a board lost with
    # its node (an elastic run's node loss took one down in CI) means the line is printed instead.
    from ftray.progress import board
    from ftray.train import Progress
    gone = board()
    ray.kill(gone)
    callback = Progress(2, str(tmp_path / "tb"), "val_accuracy", gone)
    metrics = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.9, "lr": 1e-3,
               "epoch_time_s": 1.0, "samples_per_s": 100.0}
    callback.after_report(None, [metrics], checkpoint=object())
    assert "[ftray] epoch 1/2  train_loss 0.5000  val_loss 0.4000  val_accuracy 0.9000" in capsys.readouterr().out
    callback.after_exception(None, {})
