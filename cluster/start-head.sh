#!/usr/bin/env bash
# Start a local Ray head for ftray: dashboard and job server on 127.0.0.1 only, token
# authentication on. Prints the address and how clients get the token.
#   cluster/start-head.sh [extra `ray start` flags, e.g. --num-cpus=8]     stop: cluster/stop-head.sh
# Environment: RAY_PORT (default 6379), RAY_DASHBOARD_PORT (8265), FTRAY_HEAD_DIR (~/.ftray/head:
# the pid file and the log of this head).
set -euo pipefail
export RAY_AUTH_MODE=token
port="${RAY_PORT:-6379}"
dash="${RAY_DASHBOARD_PORT:-8265}"
state="${FTRAY_HEAD_DIR:-$HOME/.ftray/head}"
mkdir -p "$state"
if [[ -f "$state/pid" ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
  echo "start-head.sh: a head started here runs already (pid $(cat "$state/pid")); cluster/stop-head.sh stops it" >&2
  exit 2
fi

# `--block` keeps one process that owns the head: stop-head.sh ends exactly that process tree
# (plain `ray stop` ends every Ray process of this user on the machine, other people's too).
nohup ray start --head --block --port="$port" --dashboard-host=127.0.0.1 --dashboard-port="$dash" \
  --disable-usage-stats "$@" >"$state/ray-start.log" 2>&1 &
echo $! >"$state/pid"

# Wait for the job server: it answers (401 without a token) once the head is up.
if ! python - "$dash" "$(cat "$state/pid")" <<'PY'
import os, sys, time, urllib.error, urllib.request
dash, pid = sys.argv[1], int(sys.argv[2])
for _ in range(240):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)  # ray start exited
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PY
then
  cat "$state/ray-start.log" >&2
  echo "start-head.sh: the head did not come up (log above: $state/ray-start.log)" >&2
  exit 1
fi

cat <<MSG
Ray head is up (pid $(cat "$state/pid"), log $state/ray-start.log).
  jobs / dashboard: http://127.0.0.1:${dash}
  cluster address:  127.0.0.1:${port}     (ftray run SPEC --address 127.0.0.1:${port})
  token:            ~/.ray/auth_token  (print it: ray get-auth-token; clients on other machines copy
                    it to their ~/.ray/auth_token or set RAY_AUTH_TOKEN)
  ftray submit / ftray jobs send the token by themselves; the ray CLI needs RAY_AUTH_MODE=token:
    ftray submit jobs/quickstart.yaml --address http://127.0.0.1:${dash}
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:${dash} \\
      --working-dir . -- python -m ftray run jobs/quickstart.yaml
MSG
