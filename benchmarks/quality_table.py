"""The tiny-shapes quality table: judge rates on N samples per prompt with the default sampler.

    .venv/bin/python benchmarks/quality_table.py [--model tiny-shapes] [--n 256] [--guidance 3.0]

Prints a Markdown table (colour / shape / count / all per prompt) and writes the JSON rows to --json.
"""

from __future__ import annotations

import argparse
import json

import torch

from hero.models import load_pipeline
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    prompts = args.prompts.split(",") if args.prompts else counting_prompts() + EXTRA_PROMPTS
    rows = []
    print(f"model {args.model}, {args.n} samples per prompt, 20 DDIM steps, eta 1.0, guidance {args.guidance}\n")
    print("| prompt | colour | shape | count | all |\n|---|---|---|---|---|")
    for prompt in prompts:
        images = sample_images(pipe, prompt, args.n, seed=args.seed, guidance_scale=args.guidance)
        r = rates(Judge().judge_batch(images, parse_task(prompt)))
        rows.append({"prompt": prompt, **r})
        print(f"| {prompt} | {r['colour']:.2f} | {r['shape']:.2f} | {r['count']:.2f} | {r['all']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
