"""`make demo`: the built-in model on the toy world, judged by the simulated human.

Samples 64 images for a few counting prompts from the shipped tiny-shapes model, judges each image,
writes one grid per prompt with a green (good) or red (not good) frame around every image, and prints
the judge's rates. (The full HERO loop joins the demo with the engine.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hero.models import load_pipeline
from hero.sampling import sample_images
from hero.toyworld import Judge, parse_task, rates
from hero.toyworld.scenes import verdict_grid
from hero.toyworld.tasks import counting_prompts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    console.print("[bold]hero demo[/]: base samples of the built-in tiny-shapes model, judged by the simulated human")
    pipe = load_pipeline("tiny-shapes")
    table = Table("prompt", "colour", "shape", "count", "all (good)", "seconds", "grid")
    results = []
    for prompt in counting_prompts():
        t0 = time.perf_counter()
        images = sample_images(pipe, prompt, args.n, seed=args.seed)
        seconds = time.perf_counter() - t0
        verdicts = Judge().judge_batch(images, parse_task(prompt))
        grid = out / f"base_{prompt.replace(' ', '_')}.png"
        verdict_grid(images, [v.good for v in verdicts]).save(grid)
        r = rates(verdicts)
        results.append({"prompt": prompt, **r, "seconds": round(seconds, 2), "grid": str(grid)})
        table.add_row(prompt, *(f"{r[k]:.2f}" for k in ("colour", "shape", "count", "all")), f"{seconds:.1f}", str(grid))
    console.print(table)
    (out / "base_rates.json").write_text(json.dumps(results, indent=1))
    console.print(f"green frame = judged good, red = not good. Results in {out}/")


if __name__ == "__main__":
    main()
