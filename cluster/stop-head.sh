#!/usr/bin/env bash
# Stop the Ray processes that cluster/start-head.sh started on this machine.
set -euo pipefail
ray stop
