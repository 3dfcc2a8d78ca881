"""The `ftray` command line (also `python -m ftray`).

Exit status: 0 done, 2 bad input (one message naming the file and key path or row, before Ray
starts), 1 the run failed.
"""

from __future__ import annotations

import argparse
import sys

from ftray import predict, runs, schedule, serve, submit
from ftray.runner import runner_for
from ftray.spec import SpecError, load_spec, load_spec_and_raw


RUN_HELP = """\
Fine-tune the model a job spec (SPEC, a YAML file: model, data, method, train, scaling, run)
describes, with Ray Train (RLlib for method.name: rl). The run writes
<run.storage_path>/<run.name>/: summary.json, checkpoints, the exported model; the last stdout
line names that folder.

Resuming: running a spec again with the same run.name goes on from its latest checkpoint (more
train.epochs train only the new ones; a finished run is not trained again). A change the
checkpoint cannot honour (architecture, method, data) exits 2 naming the keys; --restart
starts afresh and moves the old folder aside.

Exit status: 0 done; 2 bad input (spec, data, paths), one message naming the file and key
path or row, before Ray starts; 1 the run failed (its checkpoints are kept: re-run to resume).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftray", description="Fine-tuning on Ray: one YAML job spec.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_overrides(q):
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a spec field (repeatable); checked like the file itself")
        return q

    v = with_overrides(sub.add_parser("validate", help="check one or more job specs (and their data)"))
    v.add_argument("specs", nargs="+", metavar="SPEC")
    v.add_argument("--spec-only", action="store_true", help="check the YAML only, not data or model files")

    r = with_overrides(sub.add_parser("run", help="fine-tune a job spec with Ray Train",
                                      description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter))
    r.add_argument("spec", metavar="SPEC", help="the job spec, a YAML file (see docs/reference.md)")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    r.add_argument("--restart", action="store_true",
                   help="start the run afresh: move an existing run folder of this name aside (never deleted)")
    _console_flags(r)
    w = with_overrides(sub.add_parser("sweep", help="Ray Tune sweep over the spec's tune.space"))
    w.add_argument("spec", metavar="SPEC")
    w.add_argument("--address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    _console_flags(w)
    sub.add_parser("reference", help="print the spec reference (markdown, as in README.md)")
    rl = sub.add_parser("rl", help="reinforcement-learning tools").add_subparsers(dest="rl_command", required=True)
    c = rl.add_parser("collect", help="roll out a checkpointed policy; write demonstrations as Parquet")
    c.add_argument("source", help="an ftray rl run folder, an RLlib algorithm checkpoint or its module folder")
    c.add_argument("--out", required=True, help="Parquet file to write (RLlib's offline columns)")
    c.add_argument("--episodes", type=int, default=20, help="episodes to play (default 20)")
    c.add_argument("--seed", type=int, default=0, help="seed of the first episode's reset (then +1 each)")
    c.add_argument("--env", default=None, help="environment (default: the run's method.env)")
    c.add_argument("--env-kwargs", default=None, help="YAML mapping (default: the run's method.env_kwargs)")
    c.add_argument("--sample", action="store_true", help="sample actions instead of taking the greedy one")
    submit.add_parsers(sub)
    schedule.add_parsers(sub)
    predict.add_parsers(sub)
    runs.add_parsers(sub)
    serve.add_parsers(sub)
    return p


def _console_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--verbose", action="store_true",
                   help="show Ray's own console: every worker's output (prefixed) and Ray's warnings")
    g.add_argument("--quiet", action="store_true", help="print only the result folder (and errors)")


def _set_console(args, default: str = "normal") -> None:
    from ftray import ray_context
    ray_context.set_console("verbose" if args.verbose else "quiet" if args.quiet else default)


# Sweeps and RL runs keep Ray's console unless --quiet: their lines (each trial's epochs, PPO's
# iterations) are printed by Ray's processes, not yet gathered by the driver as a run's are.
RAY_CONSOLE = "verbose"


def cmd_reference(args) -> int:
    from ftray.reference import spec_reference
    print(spec_reference(), end="")
    return 0


def cmd_validate(args) -> int:
    """Check every spec as `run` and `sweep` would before Ray starts (a spec with a tune section
    also as a sweep: searched keys and values, searcher and scheduler); one line per spec, exit 2
    if any failed."""
    failed = 0
    for path in args.specs:
        try:
            spec = _validate_one(path, args.overrides, args.spec_only)
        except SpecError as e:
            failed += 1
            message = str(e)
            print(f"ftray: error: {message if path in message else f'{path}: {message}'}", file=sys.stderr)
            continue
        print(f"{path}: ok ({spec.model.name} / {spec.method.name}, run {spec.run.name})")
    return 2 if failed else 0


def _validate_one(path: str, overrides: list[str], spec_only: bool):
    from ftray import sweep
    spec, raw = load_spec_and_raw(path, overrides)
    if spec_only:
        if spec.tune:
            sweep.check_space(raw, spec, path)
    elif spec.tune:
        sweep.check(raw, spec, path)  # the searched keys, then everything a run checks
    else:
        runner_for(spec).check()
    return spec


def cmd_run(args) -> int:
    spec = load_spec(args.spec, args.overrides)
    _set_console(args, "normal" if spec.method.supervised else RAY_CONSOLE)
    runner = runner_for(spec)
    plan = runner.check(args.address)
    if args.restart:
        from ftray.resume import restart
        restart(spec)
    status, run_dir = runner.run(plan, args.address)
    return _finish(status, run_dir, "run failed; finished checkpoints are kept, re-run to resume")


def cmd_sweep(args) -> int:
    from ftray.sweep import run_sweep
    spec, raw = load_spec_and_raw(args.spec, args.overrides)
    _set_console(args, RAY_CONSOLE)
    status, folder = run_sweep(raw, spec, args.spec, args.address)
    return _finish(status, folder, "every trial failed; see trials.csv and the trial folders")


def _finish(status: int, folder: str, failure: str) -> int:
    """Print the folder as the last stdout line (the runner stopped the Ray it started, so Ray's
    forwarded logs ended before it)."""
    if status:
        print(f"ftray: {failure}", file=sys.stderr)
    print(folder, flush=True)
    return status


def cmd_rl(args) -> int:
    from ftray import rl
    return rl.collect(args.source, args.out, args.episodes, args.seed, args.env, args.env_kwargs, args.sample)


COMMANDS = {"validate": cmd_validate, "run": cmd_run, "sweep": cmd_sweep, "reference": cmd_reference, "rl": cmd_rl,
            "submit": submit.cmd_submit, "jobs": submit.cmd_jobs, "schedule": schedule.cmd_schedule,
            "predict": predict.cmd_predict, "eval": predict.cmd_eval,
            "runs": runs.cmd_runs, "serve": serve.cmd_serve}


def _chosen(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)subcommand parser `args` went through: `ftray rl collect`'s, not `ftray`'s."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[name]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would print the top-level usage; the subcommand's says what it takes
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except SpecError as e:
        print(f"ftray: error: {e}", file=sys.stderr)
        return 2
