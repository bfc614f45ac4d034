"""Seconds to sample 64 images (20 DDIM steps, eta 1, classifier-free guidance) from tiny-shapes on this CPU.

    .venv/bin/python benchmarks/sampling_speed.py [--model tiny-shapes] [--n 64] [--repeats 3] [--threads 2]

Prints one JSON line per precision with the median seconds over the repeats (after one warm-up run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from hero.models import load_pipeline
from hero.sampling import sample_images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-shapes")
    ap.add_argument("--prompt", default="three green triangles")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    for precision in args.precisions.split(","):
        sample_images(pipe, args.prompt, 8, precision=precision)  # warm-up
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            sample_images(pipe, args.prompt, args.n, seed=r, precision=precision)
            times.append(time.perf_counter() - t0)
        print(json.dumps({"model": args.model, "n": args.n, "steps": 20, "guidance": True, "precision": precision,
                          "threads": args.threads, "seconds_median": round(statistics.median(times), 2),
                          "seconds_all": [round(t, 2) for t in times]}))


if __name__ == "__main__":
    main()
