#!/usr/bin/env bash
# Start a local Ray head for ftray: dashboard and job server on 127.0.0.1 only, token
# authentication on. Prints the address and how clients get the token.
#   cluster/start-head.sh [extra `ray start` flags]     stop it with cluster/stop-head.sh
set -euo pipefail
export RAY_AUTH_MODE=token
ray start --head --dashboard-host=127.0.0.1 --node-ip-address=127.0.0.1 --port=6379 \
  --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" "$@"
cat <<MSG

Ray head is up.
  jobs / dashboard: http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}
  cluster address:  127.0.0.1:6379     (ftray run SPEC --address 127.0.0.1:6379)
  token:            ~/.ray/auth_token  (clients on other machines: copy it there, or set RAY_AUTH_TOKEN)
  job clients need RAY_AUTH_MODE=token in their environment to send the token, e.g.
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265} \\
      --working-dir . -- python -m ftray run jobs/quickstart.yaml
MSG
