"""HERO before/after on the built-in model: several seeds, one prompt, the demo preset (512 feedback).

    .venv/bin/python benchmarks/hero_before_after.py --seeds 0,1,2 --prompt "three green triangles" \
        --out runs/bench-hero --eval-n 256 --parallel 2

Each seed is one `hero train` + `hero eval` in its own process (``--parallel`` at a time, one torch thread
each when parallel). Finished seeds are not rerun. Prints a Markdown table per seed and the mean, plus the
seconds per round split into sampling / representation learning / update, and writes summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hero.runs.folder import mean_seconds

KEYS = ("base_plain", "plain", "base_guided", "guided")
SECONDS = ("seconds_sampling", "seconds_representation", "seconds_update")


def run_seed(seed: int, args: argparse.Namespace, threads: int) -> dict:
    run = Path(args.out) / f"seed{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    hero = [sys.executable, "-m", "hero.cli"]
    if not (run / "lora").is_dir():
        train = hero + ["train", "--preset", args.preset, "--prompt", args.prompt, "--seed", str(seed), "--out",
                        str(run), "--no-progress"] + [a for s in args.set for a in ("--set", s)]
        if (run / "config.yaml").is_file():
            train = hero + ["train", "--resume", str(run), "--no-progress"]
        subprocess.run(train, env=env, check=True, stdout=subprocess.DEVNULL)
    eval_file = run / f"eval_n{args.eval_n}.json"
    if not eval_file.is_file():
        out = subprocess.run(hero + ["eval", str(run), "--n", str(args.eval_n), "--json"], env=env, check=True,
                             capture_output=True, text=True).stdout
        eval_file.write_text(out.strip().splitlines()[-1])
    result = json.loads(eval_file.read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result.update({k: mean_seconds(metrics, k) for k in SECONDS})
    result["seed"] = seed
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--prompt", default="three green triangles")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--out", default="runs/bench-hero")
    ap.add_argument("--eval-n", type=int, default=256)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    threads = 1 if args.parallel > 1 else (os.cpu_count() or 1)
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda s: run_seed(s, args, threads), seeds))
    print(f"HERO, {args.prompt!r}, preset {args.preset}, eval n={args.eval_n} per cell\n")
    print("| seed | base plain | HERO plain | base guided | HERO guided | s/round sampling | representation | update |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows + [{"seed": "mean", **{k: statistics.mean(x[k] for x in rows) for k in KEYS + SECONDS}}]:
        print(f"| {r['seed']} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS) + " | "
              + " | ".join(f"{r[k]:.1f}" for k in SECONDS) + " |")
    Path(args.out, "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
