"""Fault injection for tests (tests/test_faults*.py, tests/test_submit.py): real faults in a run's
workers, switched on by environment variables of the driver. Production code never imports this
module: `ftray.train` builds `FaultHooks` only when one of `ENVS` is set.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

FAIL_AFTER_EPOCH_ENV = "FTRAY_FAIL_AFTER_EPOCH"  # an epoch: every worker raises after reporting its checkpoint
KILL_AT_STEPS_ENV = "FTRAY_KILL_AT_STEPS"  # "7,15,23": SIGKILL the last rank right after these steps
KILL_IN_CHECKPOINT_ENV = "FTRAY_KILL_IN_CHECKPOINT"  # an epoch: rank 0 dies halfway through its checkpoint
STEP_LOG_ENV = "FTRAY_STEP_LOG"  # a file: rank 0 appends one JSON line per optimizer step
ENVS = (FAIL_AFTER_EPOCH_ENV, KILL_AT_STEPS_ENV, KILL_IN_CHECKPOINT_ENV, STEP_LOG_ENV)


@dataclass(frozen=True)
class FaultHooks:
    """Real faults injected into a run's workers, each firing once. Attempts of a run are counted
    by its resumptions from checkpoints: the i-th of `kill_at_steps` fires in attempt i (so an
    attempt must write a checkpoint before its kill, or the next one counts as the same attempt),
    the checkpoint-write kill in the first attempt. `step_log` records every optimizer step, to
    prove none was skipped or repeated. `fail_after_epoch` raises (a failed run, not a lost worker)."""
    kill_at_steps: tuple[int, ...] = ()
    kill_in_checkpoint: int | None = None
    step_log: str | None = None
    fail_after_epoch: int | None = None

    @classmethod
    def from_env(cls) -> "FaultHooks":
        steps, epoch = os.environ.get(KILL_AT_STEPS_ENV, ""), os.environ.get(KILL_IN_CHECKPOINT_ENV)
        fail = os.environ.get(FAIL_AFTER_EPOCH_ENV)
        return cls(tuple(int(s) for s in steps.split(",") if s.strip()), int(epoch) if epoch else None,
                   os.environ.get(STEP_LOG_ENV) or None, int(fail) if fail else None)

    def after_step(self, state, epoch: int, rank: int, world: int) -> None:
        """After optimizer step `state.step` of `epoch` (`state`: the loop's `TrainState`)."""
        attempt = len(state.resumes)
        if self.step_log and rank == 0:
            with open(self.step_log, "a") as f:
                f.write(json.dumps({"attempt": attempt, "epoch": epoch, "step": state.step,
                                    "workers": world}) + "\n")
        if rank == world - 1 and attempt < len(self.kill_at_steps) and state.step == self.kill_at_steps[attempt]:
            os.kill(os.getpid(), signal.SIGKILL)

    def kill_in_write(self, state) -> bool:
        """Whether rank 0 dies halfway through writing the checkpoint of `state.epoch`."""
        return self.kill_in_checkpoint == state.epoch and not state.resumes

    def after_report(self, epoch: int) -> None:
        if self.fail_after_epoch == epoch:
            raise RuntimeError(f"injected failure after epoch {epoch} ({FAIL_AFTER_EPOCH_ENV})")
