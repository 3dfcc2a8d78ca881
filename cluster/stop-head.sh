#!/usr/bin/env bash
# Stop the Ray head that cluster/start-head.sh started, and only it: every process below the
# `ray start --block` process it recorded (gcs, raylet, dashboard, workers, job drivers). Then, as
# `ray stop` does, remove Ray's `ray_current_cluster` file in the head's temp dir if it still names
# this head: plain `ray.init()` on this machine would otherwise try to join the stopped head.
# Environment: FTRAY_HEAD_DIR (~/.ftray/head) as for start-head.sh.
set -euo pipefail
state="${FTRAY_HEAD_DIR:-$HOME/.ftray/head}"
if [[ ! -f "$state/pid" ]]; then
  echo "stop-head.sh: no head started by start-head.sh ($state/pid is missing)." >&2
  echo "  \`ray stop\` would stop every Ray process of this user on this machine." >&2
  exit 1
fi
python - "$(cat "$state/pid")" <<'PY'
import os, sys
import psutil  # installed with ray
try:
    root = psutil.Process(int(sys.argv[1]))
    procs = [root, *root.children(recursive=True)]
except psutil.NoSuchProcess:
    procs = []
# The head's GCS names its session dir (inside the temp dir that holds the pointer) and its port.
pointer, port = None, None
for p in procs:
    try:
        args = p.cmdline()
    except psutil.Error:
        continue
    if args and os.path.basename(args[0]) == "gcs_server":
        for a in args:
            if a.startswith("--session-dir="):
                pointer = os.path.join(os.path.dirname(a.split("=", 1)[1].rstrip("/")), "ray_current_cluster")
            elif a.startswith("--gcs_server_port="):
                port = a.split("=", 1)[1]
for p in procs:
    try:
        p.terminate()
    except psutil.NoSuchProcess:
        pass
_, alive = psutil.wait_procs(procs, timeout=8)  # then kill, as `ray stop` does after its grace period
for p in alive:
    try:
        p.kill()
    except psutil.NoSuchProcess:
        pass
print(f"stopped the Ray head ({len(procs)} processes)")
try:
    with open(pointer) as f:
        if port and f.read().strip().endswith(f":{port}"):  # not a newer head's
            os.remove(pointer)
            print(f"removed {pointer}, which named it")
except (OSError, TypeError):
    pass  # no pointer (or another head's): nothing to remove
PY
rm -f "$state/pid"
