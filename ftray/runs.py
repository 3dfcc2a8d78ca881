"""`ftray runs [STORAGE]` and `ftray runs show NAME`: the runs and sweeps under a storage path.

Everything here reads the folders' `summary.json` files (a run's, or a sweep's, which names its
metric and best trial); nothing starts Ray. A folder with checkpoints but no summary is a run
that is still going, or was killed before it wrote one (`incomplete`): re-running its spec resumes it.
"""

from __future__ import annotations

import argparse
import json
import sys

import pyarrow.fs as pafs

from ftray.schema import SpecError

DEFAULT_STORAGE = "runs"  # run.storage_path's default
COLUMNS = ("name", "kind", "status", "method", "metric", "time", "resumes")
# The metric a run of each task is judged by (ftray.spec.data.TASK_METRICS), then an RL run's.
MAIN_METRICS = ("val_accuracy", "val_mse", "val_perplexity", "episode_return_mean", "val_loss")


def _filesystem(storage: str) -> tuple[pafs.FileSystem, str]:
    try:
        if "://" in storage:
            return pafs.FileSystem.from_uri(storage)
        return pafs.LocalFileSystem(), storage
    except (OSError, ValueError) as e:
        raise SpecError(f"{storage}: cannot open ({e})") from None


def _read_summary(fs: pafs.FileSystem, folder: str) -> dict | None:
    try:
        with fs.open_input_stream(f"{folder}/summary.json") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _children(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise SpecError(f"{root}: no such folder (a storage path: run.storage_path of your specs)")
    return sorted((i for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.Directory),
                  key=lambda i: i.base_name)


def kind_of(summary: dict) -> str:
    """`sweep` (a sweep folder: trials or per-task sweeps), `rl` (RLlib) or `run` (Ray Train)."""
    if ("trials" in summary and "metric" in summary) or "group_by" in summary:
        return "sweep"
    return "rl" if "rl" in summary else "run"


def main_metric(summary: dict) -> tuple[str, float] | None:
    """(name, value) of the figure a run or sweep is judged by: a sweep's best trial's
    `tune.metric`; a run's task metric (val_accuracy, val_mse, val_perplexity) or RL return."""
    if kind_of(summary) == "sweep":
        best = summary.get("best") or {}
        value = (best.get("metrics") or {}).get(summary.get("metric"))
        return None if value is None else (summary["metric"], value)
    metrics = summary.get("metrics") or {}
    name = next((m for m in MAIN_METRICS if metrics.get(m) is not None), None)
    return None if name is None else (name, metrics[name])


def _seconds(value) -> str:
    if value is None:
        return "-"
    s = round(float(value))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def row(name: str, summary: dict | None) -> dict:
    """One table row of a run folder (its summary; None: checkpoints without a summary)."""
    if summary is None:
        return dict.fromkeys(COLUMNS, "-") | {"name": name, "kind": "run", "status": "incomplete"}
    spec = summary.get("spec") or {}
    metric = main_metric(summary)
    kind = kind_of(summary)
    return {"name": name, "kind": kind, "status": summary.get("status", "-"),
            "method": (spec.get("method") or {}).get("name", "-"),
            "metric": f"{metric[0]} {metric[1]:.4g}" if metric else "-",
            "time": _seconds((summary.get("timings") or {}).get("total_s")),
            "resumes": "-" if kind == "sweep" else str(len(summary.get("resumes") or []))}


def list_runs(storage: str) -> list[dict]:
    """A row for every run and sweep folder directly under `storage` (sweep trials stay inside
    their sweep's row), by name. Folders that hold neither a summary nor a checkpoint are skipped."""
    fs, root = _filesystem(storage)
    rows = []
    for child in _children(fs, root):
        summary = _read_summary(fs, child.path)
        if summary is None and not any(i.base_name.startswith("checkpoint_")
                                       for i in fs.get_file_info(pafs.FileSelector(child.path))):
            continue
        rows.append(row(child.base_name, summary))
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a plain aligned text table with a header line."""
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)


def _locate(name: str, storage: str) -> tuple[str, dict | None]:
    """A run's folder: NAME under `storage`, or NAME itself when it is a folder holding a summary."""
    for folder in (f"{storage.rstrip('/')}/{name}", name):
        fs, path = _filesystem(folder)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            return folder, _read_summary(fs, path)
    raise SpecError(f"{storage.rstrip('/')}/{name}: no such run folder (`ftray runs {storage}` lists them)")


def show(name: str, storage: str = DEFAULT_STORAGE) -> str:
    """The summary of one run or sweep as `key: value` lines."""
    folder, summary = _locate(name, storage)
    if summary is None:
        return f"folder: {folder}\nstatus: incomplete (no summary.json yet: running, or killed; re-run its spec to resume)"
    r = row(name, summary)
    spec = summary.get("spec") or {}
    lines = [f"folder: {folder}", f"kind: {r['kind']}", f"status: {r['status']}"]
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    lines.append(f"model: {(spec.get('model') or {}).get('name', '-')}  method: {r['method']}")
    if r["kind"] == "sweep":
        lines += _sweep_lines(summary)
    else:
        lines += _run_lines(summary)
    lines.append(f"time: {r['time']}")
    return "\n".join(lines)


def _figures(values: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in values.items())


def _run_lines(summary: dict) -> list[str]:
    lines = [f"metrics: {_figures(summary.get('metrics') or {}) or '-'}"]
    if "epochs_done" in summary:
        lines.append(f"epochs: {summary['epochs_done']}  steps: {summary.get('steps_done')}"
                     f"{'  (stopped early)' if summary.get('early_stopped') else ''}")
    best = summary.get("best")
    if best and "epoch" in best:
        lines.append(f"best epoch: {best['epoch']}  {_figures({k: v for k, v in best.items() if k.startswith('val_')})}")
    resumes = summary.get("resumes") or []
    lines.append(f"resumes: {len(resumes)}" + (f" (at {', '.join(_at(x) for x in resumes)})" if resumes else ""))
    params = summary.get("params") or {}
    if params.get("total"):
        lines.append(f"parameters: {params['total']} ({params['trainable']} trainable)")
    lines += [f"checkpoint: {summary.get('checkpoint') or '-'}", f"exported model: {summary.get('model') or '-'}"]
    return lines


def _at(resume: dict) -> str:
    return " ".join(f"{k} {v}" for k, v in resume.items())


def _sweep_lines(summary: dict) -> list[str]:
    if "group_by" in summary:
        return [f"per-task sweeps over {summary['group_by']!r}: {len(summary.get('tasks') or [])} tasks "
                f"({summary['metric']}, {summary['mode']})"]
    lines = [f"trials: {summary.get('trials')}  errors: {summary.get('errors')}  "
             f"stopped early: {summary.get('stopped_early')}  ({summary['metric']}, {summary['mode']})"]
    best = summary.get("best")
    if best:
        lines += [f"best trial: {best['trial_id']}  {_figures(best.get('metrics') or {})}",
                  f"best config: {_figures(best.get('config') or {})}", f"best run: {best.get('run')}"]
    if summary.get("ensemble"):
        lines.append(f"ensemble: {json.dumps(summary['ensemble'], default=str)[:200]}")
    return lines


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `ftray runs` on the top-level subparsers."""
    p = sub.add_parser("runs", help="list the runs and sweeps under a storage path; `runs show NAME` for one",
                       description="ftray runs [STORAGE]: a table of the runs and sweeps under STORAGE (default "
                                   "runs). ftray runs show NAME [--storage STORAGE]: one run's summary.")
    p.add_argument("words", nargs="*", metavar="STORAGE | show NAME",
                   help="a storage path to list (default runs), or `show` and a run name or folder")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="where `show` looks for NAME (default runs)")


def cmd_runs(args) -> int:
    words = args.words
    if words[:1] == ["show"]:
        if len(words) != 2:
            raise SpecError("ftray runs show: give one run name (or run folder)")
        print(show(words[1], args.storage))
        return 0
    if len(words) > 1:
        raise SpecError(f"ftray runs: one storage path, got {len(words)}: {' '.join(words)}")
    storage = words[0] if words else DEFAULT_STORAGE
    rows = list_runs(storage)
    if not rows:
        print(f"{storage}: no runs", file=sys.stderr)
        return 0
    print(table(rows))
    return 0
