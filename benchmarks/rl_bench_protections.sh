#!/usr/bin/env bash
# Issue 21 item 3: the protections of a pretrained start against each other, on the 16-core CPU of a
# lent host, all cells at once (27 ftray rl processes, one per cell):
#   bash benchmarks/rl_bench_protections.sh OUT [BUDGET_S]
# CartPole (a clone of the weaker demonstrator, 61-79% of the way to 475): scratch, the start alone,
# the start with the DAPG-style pull (bc_weight 1 decaying over 20,000 env steps), with the JSRL guide
# (the start acts the first 250 steps of each episode, 4 stages) and with its logits cooled to T=2.
# MountainCar (start -130 to -151, target -110; scratch stays at -200): the start alone and each
# protection. One rl_bench.py process per arm, each with its own results.jsonl and table.md.
set -uo pipefail
out=${1:?OUT}; budget=${2:-480}
. "$(dirname "$0")/offline_env.sh"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
bench() { local name=$1; shift; python3 benchmarks/rl_bench.py --out "$out/$name" --budget-s "$budget" --stagger-s 1 "$@" \
  > "$out/$name.log" 2>&1 & }
mkdir -p "$out"
bench cartpole-scratch --tasks cartpole --arms scratch
bench cartpole-start --tasks cartpole --arms start
bench cartpole-bc --tasks cartpole --arms start --set method.bc_weight=1.0 --set method.bc_decay_steps=20000
bench cartpole-guide --tasks cartpole --arms start --set method.guide_steps=250 --set method.guide_stages=4
bench cartpole-temp --tasks cartpole --arms start --set method.start_temperature=2.0
bench mountaincar-start --tasks mountaincar --arms start
bench mountaincar-bc --tasks mountaincar --arms start --set method.bc_weight=1.0 --set method.bc_decay_steps=20000
bench mountaincar-guide --tasks mountaincar --arms start --set method.guide_steps=100 --set method.guide_stages=4
bench mountaincar-temp --tasks mountaincar --arms start --set method.start_temperature=2.0
wait
for f in "$out"/*/table.md; do echo "== $f"; cat "$f"; done
