#!/usr/bin/env bash
# Stop the Ray head that cluster/start-head.sh started, and only it: every process below the
# `ray start --block` process it recorded (gcs, raylet, dashboard, workers, job drivers).
# Environment: FTRAY_HEAD_DIR (~/.ftray/head) as for start-head.sh.
set -euo pipefail
state="${FTRAY_HEAD_DIR:-$HOME/.ftray/head}"
if [[ ! -f "$state/pid" ]]; then
  echo "stop-head.sh: no head started by start-head.sh ($state/pid is missing)." >&2
  echo "  \`ray stop\` would stop every Ray process of this user on this machine." >&2
  exit 1
fi
python - "$(cat "$state/pid")" <<'PY'
import sys
import psutil  # installed with ray
try:
    root = psutil.Process(int(sys.argv[1]))
    procs = [root, *root.children(recursive=True)]
except psutil.NoSuchProcess:
    procs = []
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
PY
rm -f "$state/pid"
