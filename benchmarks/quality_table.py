"""The tiny-shapes quality table: judge rates on N samples per prompt with the default sampler.

    .venv/bin/python benchmarks/quality_table.py [--model tiny-shapes] [--n 256] [--guidance 3.0] [--precision bf16]

Prints a Markdown table (colour / shape / count / all per prompt, each with its binomial standard error for
"all") and writes the JSON rows to --json. ``--precision`` samples as a run at that precision would (frozen
weights stored in it, the network under its autocast), on the same seeds, so two tables compare image for image.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from hero.models import load_pipeline
from hero.models.loading import resolve_precision, weight_dtype
from hero.sampling import DEFAULT_GUIDANCE, sample_images
from hero.toyworld import Judge, parse_task, rates
from hero.toyworld.tasks import counting_prompts

EXTRA_PROMPTS = ["one red circle", "two yellow squares on black", "one red circle and one blue square"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-shapes")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", default=None, help="comma-separated; default: the counting prompts and a few more")
    ap.add_argument("--json", default=None)
    ap.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 or auto (what a run picks here)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, "cpu")
    pipe = load_pipeline(args.model, dtype=weight_dtype(precision))
    prompts = args.prompts.split(",") if args.prompts else counting_prompts() + EXTRA_PROMPTS
    rows = []
    print(f"model {args.model}, {args.n} samples per prompt, 20 DDIM steps, eta 1.0, guidance {args.guidance}, "
          f"{precision}, {torch.get_num_threads()} threads\n")
    print("| prompt | colour | shape | count | all ± s.e. |\n|---|---|---|---|---|")
    for prompt in prompts:
        t0 = time.perf_counter()
        images = sample_images(pipe, prompt, args.n, seed=args.seed, guidance_scale=args.guidance,
                               precision=precision)
        seconds = time.perf_counter() - t0
        r = rates(Judge().judge_batch(images, parse_task(prompt)))
        se = math.sqrt(r["all"] * (1 - r["all"]) / args.n)
        rows.append({"prompt": prompt, **r, "all_stderr": se, "precision": precision, "seconds": seconds})
        print(f"| {prompt} | {r['colour']:.2f} | {r['shape']:.2f} | {r['count']:.2f} | {r['all']:.3f} ± {se:.3f} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
