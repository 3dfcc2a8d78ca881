"""`ftray schedule`: job specs submitted as Ray jobs on a cron schedule (e.g. a sweep every night).

Ray Jobs has no scheduler of its own; this is a small one. `ftray schedule add` records an entry,
`ftray schedule run` is the long-running scheduler that submits each due slot through the same
path as `ftray submit`, and `run --once` does one pass (for cron, systemd timers, or tests).

Exactly once per slot, across restarts:
- State lives in one JSON file (`schedules.json` in the state folder: `--state-dir`, else
  FTRAY_SCHEDULE_DIR, else ~/.ftray/schedules), replaced atomically (write a temp file, fsync,
  os.replace) under a file lock, so a crash never leaves half a file and two schedulers never
  interleave their updates.
- An entry remembers the last slot it handled. A restarted scheduler finds every slot after it
  that is due by now, so no due run is lost while it was down (the catch-up policy says which of
  the missed slots still run).
- Each slot's submission id derives from the entry name and the slot time
  (`ftray-NAME-20300101T020000Z`). A crash between submitting and recording leaves the slot due;
  the next pass asks the job server, finds that id already there and records it instead of
  submitting again.

Cron expressions are evaluated in UTC (croniter; five fields, or six with seconds last).
Concurrency: `skip` (default) passes over a slot while the entry's previous job still runs,
`allow` submits anyway. Catch-up for slots missed while the scheduler was down: `latest`
(default) runs only the most recent one, `all` runs each (the last MAX_CATCH_UP), `none` runs a
slot only if it is at most MISFIRE_GRACE late.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ftray.spec import SpecError

STATE_DIR_ENV = "FTRAY_SCHEDULE_DIR"
STATE_FILE = "schedules.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # it becomes part of a submission id
MISFIRE_GRACE = timedelta(seconds=60)
MAX_CATCH_UP = 100
HISTORY_KEPT = 50
RUNNING = ("PENDING", "RUNNING")
# Test hook: exit right after a submission, before recording it (a crash at the worst moment).
CRASH_AFTER_SUBMIT_ENV = "FTRAY_SCHEDULE_CRASH_AFTER_SUBMIT"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# ========================================================================================= state
@dataclass
class Entry:
    """One scheduled job: what to submit (spec, overrides, working dir), where, and when."""
    name: str
    cron: str
    spec: str  # relative to workdir
    workdir: str
    overrides: list[str] = field(default_factory=list)
    sweep: bool = False
    address: str | None = None
    concurrency: str = "skip"
    catch_up: str = "latest"
    created: str = ""  # ISO time; slots after it are due
    last_slot: str | None = None  # the last slot handled (submitted, skipped or failed)
    last_submission: str | None = None  # job id of the last slot submitted
    history: list[dict] = field(default_factory=list)  # the last HISTORY_KEPT slots handled

    def anchor(self) -> datetime:
        return datetime.fromisoformat(self.last_slot or self.created)


def state_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get(STATE_DIR_ENV) or Path.home() / ".ftray" / "schedules").expanduser()


@contextmanager
def locked_state(folder: Path) -> Iterator[dict[str, Entry]]:
    """The entries, under an exclusive lock; written back (atomically) when the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = load(folder)
        yield entries
        save(folder, entries)


def load(folder: Path) -> dict[str, Entry]:
    path = folder / STATE_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {name: Entry(**e) for name, e in raw["entries"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{path}: not a schedule state file ({e}); fix or remove it") from None


def save(folder: Path, entries: dict[str, Entry]) -> None:
    """Replace the state file atomically: readers and a crash see the old or the new file, whole."""
    payload = json.dumps({"entries": {n: asdict(e) for n, e in sorted(entries.items())}}, indent=2)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{STATE_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


# ========================================================================================= slots
def check_cron(expr: str) -> None:
    from croniter import croniter
    if not croniter.is_valid(expr):
        raise SpecError(f"--cron {expr!r}: not a valid cron expression (five fields: minute hour "
                        f"day-of-month month day-of-week, e.g. '0 2 * * *' for 02:00 UTC daily)")


def due_slots(cron: str, after: datetime, now: datetime) -> tuple[list[datetime], int]:
    """Slots in (after, now], oldest first: the last MAX_CATCH_UP of them, and how many there were."""
    from croniter import croniter
    it = croniter(cron, after)
    slots: deque[datetime] = deque(maxlen=MAX_CATCH_UP)
    count = 0
    while (slot := it.get_next(datetime)) <= now:
        slots.append(slot)
        count += 1
    return list(slots), count


def to_fire(slots: list[datetime], catch_up: str, now: datetime) -> list[datetime]:
    """Which of the due slots run under the catch-up policy (the others are skipped)."""
    if not slots or catch_up == "all":
        return slots
    if catch_up == "latest" or now - slots[-1] <= MISFIRE_GRACE:
        return slots[-1:]
    return []


def submission_id(name: str, slot: datetime) -> str:
    """The job id of one slot: the same on every attempt, so a repeat is recognised."""
    return f"ftray-{name}-{slot.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"


def next_slot(entry: Entry, now: datetime) -> datetime:
    from croniter import croniter
    return croniter(entry.cron, max(now, entry.anchor())).get_next(datetime)


# ===================================================================================== the runner
def add_entry(folder: Path, name: str, cron: str, spec: str, *, overrides: list[str] = (),
              sweep: bool = False, address: str | None = None, concurrency: str = "skip",
              catch_up: str = "latest", now: Clock = utc_now) -> Entry:
    """Check and record a new entry (SpecError: bad name or cron, name taken, spec invalid)."""
    from ftray.submit import build_submission
    if not NAME.match(name):
        raise SpecError(f"schedule name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
    check_cron(cron)
    with locked_state(folder) as entries:
        if name in entries:
            raise SpecError(f"schedule {name!r} exists already in {folder / STATE_FILE}; "
                            f"`ftray schedule remove {name}` first or pick another name")
        sub = build_submission(spec, list(overrides), sweep=sweep, address=address)
        entry = Entry(name=name, cron=cron, spec=sub.metadata["ftray_spec"], workdir=str(Path.cwd()),
                      overrides=list(overrides), sweep=sweep, address=address, concurrency=concurrency,
                      catch_up=catch_up, created=now().isoformat())
        entries[name] = entry
    return entry


def remove_entry(folder: Path, name: str) -> None:
    with locked_state(folder) as entries:
        if name not in entries:
            raise SpecError(f"schedule {name!r}: no such entry in {folder / STATE_FILE}")
        del entries[name]


def run_once(folder: Path, now: Clock = utc_now, log=print) -> int:
    """Handle every slot that is due at `now()`. Returns 0, or 1 if a submission failed (that
    slot stays due and is tried again next time)."""
    status = 0
    with locked_state(folder) as entries:
        for entry in entries.values():
            t = now()
            slots, count = due_slots(entry.cron, entry.anchor(), t)
            if not slots:
                continue
            fire = to_fire(slots, entry.catch_up, t)
            skipped = [s for s in slots if s not in fire]  # all older than the fired ones
            missed = count - len(fire)
            if missed:
                note = f"{missed} slot(s) missed while the scheduler was down (catch_up: {entry.catch_up})"
                if skipped:
                    _record(entry, skipped[-1], "skipped", reason=note)
                else:  # catch_up all, beyond MAX_CATCH_UP: the oldest ones are dropped
                    entry.history.append({"slot": None, "action": "skipped", "at": utc_now().isoformat(),
                                          "reason": note})
                log(f"[schedule] {entry.name}: {note}")
                save(folder, entries)
            for slot in fire:
                try:
                    _fire(entry, slot, log)
                except _Retry as e:
                    log(f"[schedule] {entry.name}: slot {slot.isoformat()} not submitted, will retry: {e}")
                    status = 1
                    break  # later slots wait until this one went out
                save(folder, entries)
    return status


def run_forever(folder: Path, interval_s: float = 30.0, now: Clock = utc_now,
                sleep: Callable[[float], None] = time.sleep, log=print, max_passes: int | None = None) -> None:
    """The scheduler: a pass whenever the next slot is due, and at least every `interval_s` (to
    see entries added meanwhile)."""
    passes = 0
    while max_passes is None or passes < max_passes:
        run_once(folder, now, log)
        passes += 1
        t = now()
        upcoming = [next_slot(e, t) for e in load(folder).values()]
        wait = min([interval_s, *[(s - t).total_seconds() for s in upcoming]])
        sleep(max(0.0, wait) + 0.01)


class _Retry(Exception):
    """The slot could not be handled now (cluster unreachable); it stays due."""


def _fire(entry: Entry, slot: datetime, log) -> None:
    from ftray.submit import build_submission, connect, submit
    sid = submission_id(entry.name, slot)
    try:
        client = connect(entry.address)
    except SpecError as e:
        raise _Retry(str(e)) from None
    if _job_status(client, sid) is not None:
        # Submitted by an earlier pass that stopped before recording it.
        _record(entry, slot, "submitted", submission_id=sid, reason="found on the job server")
        log(f"[schedule] {entry.name}: {sid} was submitted already; recorded")
        return
    previous = entry.last_submission
    if entry.concurrency == "skip" and previous and _job_status(client, previous) in RUNNING:
        _record(entry, slot, "skipped", reason=f"previous job {previous} still running (concurrency: skip)")
        log(f"[schedule] {entry.name}: skipped slot {slot.isoformat()}: {previous} still running")
        return
    try:
        with _working_directory(entry.workdir):
            sub = build_submission(entry.spec, entry.overrides, sweep=entry.sweep, address=entry.address)
            submit(client, sub, sid, entry.address)
    except OSError as e:  # the connection broke (requests' errors are OSErrors)
        raise _Retry(str(e)) from None
    except SpecError as e:
        if _job_status(client, sid) is not None:  # another scheduler won the race
            _record(entry, slot, "submitted", submission_id=sid, reason="found on the job server")
            return
        # A spec or data problem does not heal by retrying this slot; the next slot tries again.
        _record(entry, slot, "error", reason=str(e))
        log(f"[schedule] {entry.name}: slot {slot.isoformat()} not submitted: {e}")
        return
    if os.environ.get(CRASH_AFTER_SUBMIT_ENV) == "1":
        sys.stdout.flush()
        os._exit(3)
    _record(entry, slot, "submitted", submission_id=sid)
    log(f"[schedule] {entry.name}: submitted {sid} ({sub.entrypoint})")


def _job_status(client, job_id: str) -> str | None:
    try:
        return str(client.get_job_status(job_id))
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            return None
        raise _Retry(str(e)) from None


def _record(entry: Entry, slot: datetime, action: str, **info) -> None:
    entry.last_slot = slot.isoformat()
    if action == "submitted":
        entry.last_submission = info["submission_id"]
    entry.history.append({"slot": slot.isoformat(), "action": action, "at": utc_now().isoformat(), **info})
    del entry.history[:-HISTORY_KEPT]


@contextmanager
def _working_directory(path: str) -> Iterator[None]:
    """Relative paths of an entry (its spec, data) resolve against the folder it was added from."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# ================================================================================== command line
def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `ftray schedule add|list|remove|run` on the top-level subparsers."""
    p = sub.add_parser("schedule", help="submit job specs as Ray jobs on a cron schedule")
    p.add_argument("--state-dir", default=None,
                   help=f"folder of the schedule state (default: {STATE_DIR_ENV}, else ~/.ftray/schedules)")
    ssub = p.add_subparsers(dest="schedule_command", required=True)
    a = ssub.add_parser("add", help="add an entry")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--cron", required=True, metavar="EXPR", help="cron expression in UTC, e.g. '0 2 * * *'")
    a.add_argument("spec", metavar="SPEC", help="job spec inside the current directory")
    a.add_argument("--address", default=None, help="the cluster's job server, e.g. http://127.0.0.1:8265")
    a.add_argument("--sweep", action="store_true", help="submit `ftray sweep SPEC` instead of `ftray run SPEC`")
    a.add_argument("--concurrency", choices=("skip", "allow"), default="skip",
                   help="while the previous job still runs: skip the slot (default) or submit anyway")
    a.add_argument("--catch-up", choices=("none", "latest", "all"), default="latest",
                   help="slots missed while the scheduler was down: none, the latest (default), or all")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec field (repeatable)")
    ssub.add_parser("list", help="show the entries, their next and last slots")
    r = ssub.add_parser("remove", help="remove an entry")
    r.add_argument("name", metavar="NAME")
    run = ssub.add_parser("run", help="run the scheduler (until interrupted)")
    run.add_argument("--once", action="store_true", help="handle the slots due now, then exit")
    run.add_argument("--interval", type=float, default=30.0, metavar="S",
                     help="longest sleep between passes, to pick up new entries (default 30)")
    run.add_argument("--now", default=None, metavar="ISO",
                     help="with --once: take this UTC time as now (tests, backfills)")


def cmd_schedule(args) -> int:
    folder = state_dir(args.state_dir)
    if args.schedule_command == "add":
        entry = add_entry(folder, args.name, args.cron, args.spec, overrides=args.overrides, sweep=args.sweep,
                          address=args.address, concurrency=args.concurrency, catch_up=args.catch_up)
        print(f"{entry.name}: added; next slot {next_slot(entry, utc_now()).isoformat()}")
        return 0
    if args.schedule_command == "remove":
        remove_entry(folder, args.name)
        print(f"{args.name}: removed")
        return 0
    if args.schedule_command == "list":
        now = utc_now()
        for e in load(folder).values():
            last = e.history[-1] if e.history else None
            last_text = f"{last['action']} {last.get('submission_id') or last['slot']}" if last else "-"
            print(f"{e.name}  '{e.cron}'  {e.spec}  next {next_slot(e, now).isoformat()}  last {last_text}  "
                  f"({e.address or 'default cluster'}, concurrency {e.concurrency}, catch-up {e.catch_up})")
        return 0
    # run
    if args.now and not args.once:
        raise SpecError("--now: only with --once")
    if args.once:
        fixed = _parse_now(args.now) if args.now else None
        return run_once(folder, (lambda: fixed) if fixed else utc_now, log=_log)
    print(f"[schedule] running; state in {folder / STATE_FILE}", flush=True)
    try:
        run_forever(folder, args.interval, log=_log)
    except KeyboardInterrupt:
        return 0
    return 0


def _parse_now(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SpecError(f"--now {text!r}: expected an ISO 8601 time, e.g. 2030-01-01T02:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _log(message: str) -> None:
    print(message, flush=True, file=sys.stdout)
