#!/usr/bin/env bash
# The learning-per-judgement grid on one GPU: every method, 3 seeds, budgets 128/256/512/1024, n = 512 per cell.
#
# On the 2-core CPU machine one RAFT run of 512 feedback takes 45-90 min (300 denoising-loss steps of 16 per
# round dominate), so the grid (6 methods x 3 seeds, each to 1024 feedback) is days of CPU; on a GPU the built-in
# model is small enough to run many cells side by side. Usage, from the repository root, after `make setup`
# with a CUDA build of torch:
#
#   bash benchmarks/gpu_grid.sh [OUT] [JOBS]
#
# OUT (default runs/bench-gpu) is resumable: a rerun skips finished cells. JOBS (default 8) cells share the GPU,
# each with its own process; the tiny model needs well under 2 GiB per cell. The report is OUT/report.md
# (docs/bench.md's table format); copy its tables into docs/bench.md with the command line below.
set -euo pipefail
out=${1:-runs/bench-gpu}
jobs=${2:-8}
hero=${HERO:-.venv/bin/hero}
# The demo preset (the bench's) pins HERO's policy-gradient update (to keep make demo short); the grid runs HERO's
# default. It also trains the policy updates on the conditional CFG half only, a CPU speed-up measured for the demo's
# HERO alone: the grid's baselines keep the papers' update on both halves.
"$hero" bench --methods hero,d3po,ddpo,dpok,seiko,raft --seeds 0,1,2 --budgets 128,256,512,1024 \
  --images-per-round 64 --eval-n 512 --set hero.update=likelihood --set pg.sampled_uncond=false --device cuda \
  --jobs "$jobs" --out "$out"
# HERO as the paper runs it, beside the default (docs/learning.md).
"$hero" bench --methods hero --seeds 0,1,2 --budgets 128,256,512,1024 --images-per-round 64 --eval-n 512 \
  --preset hero-paper --device cuda --jobs "$jobs" --out "$out-hero-paper"
# 10% wrong marks from the simulated human, the best method (RAFT so far) and HERO.
"$hero" bench --methods raft,hero --seeds 0,1,2 --budgets 512 --images-per-round 64 --eval-n 512 \
  --set feedback=sim:0.1 --set hero.update=likelihood --device cuda --jobs "$jobs" --out "$out-sim0.1"
# The other toy-world tasks, one seed each at 512 feedback.
"$hero" bench --methods hero,d3po,ddpo,dpok,seiko,raft --tasks binding,personalization,safety --seeds 0 \
  --budgets 512 --images-per-round 64 --eval-n 512 --set hero.update=likelihood --set pg.sampled_uncond=false \
  --device cuda --jobs "$jobs" --out "$out-tasks"
