"""Regenerate docs/web-page.png: the feedback page at round 2 of 8 with 64 tiny-shapes images, on a laptop screen.

    .venv/bin/python docs/web_screenshot.py [--out docs/web-page.png] [--model-samples]

Makes two rounds of 64 images, records round 1 as a person would have (the toy judge's answers), serves round 2
through the real server and marks it in headless Chromium (Debian's ``chromium``). The images are toy-world
renders near the prompt (what a fine-tuned model shows); ``--model-samples`` samples the built-in model instead.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from playwright.sync_api import sync_playwright

from hero.feedback.base import mark_best_good, pick_best
from hero.models import load_pipeline
from hero.runs.feedback_log import FeedbackLog
from hero.runs.folder import RunFolder
from hero.sampling import sample_images
from hero.toyworld import Judge, parse_task, random_scene, render
from hero.web import WebFeedback

PROMPT = "two red squares"


def scenes(n: int, seed: int) -> np.ndarray:
    """Toy-world renders near the prompt: right, or off by the count, the colour or the shape."""
    rng = np.random.default_rng(seed)
    near = [[(2, "red", "square")]] * 3 + [[(1, "red", "square")], [(3, "red", "square")], [(2, "blue", "square")],
                                          [(2, "red", "circle")], None]
    return np.stack([render(random_scene(rng, near[rng.integers(len(near))])) for _ in range(n)])


def judged_round(pipe, run: RunFolder, r: int, seed: int) -> tuple[np.ndarray, list[bool], int]:
    """Make 64 images in round ``r`` of ``run``; return them with the judge's good marks and best."""
    images = scenes(64, seed) if pipe is None else sample_images(pipe, PROMPT, 64, seed=seed, steps=20)
    for i, im in enumerate(images):
        run.image_path(r, i).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(run.image_path(r, i))
    verdicts = Judge().judge_batch(images, parse_task(PROMPT))
    good = [bool(v.good) for v in verdicts]
    best = pick_best(np.array([v.score for v in verdicts]), good, None)
    return images, mark_best_good(good, best), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "web-page.png")
    parser.add_argument("--model-samples", action="store_true", help="sample tiny-shapes instead of rendering")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline("tiny-shapes") if args.model_samples else None
    with tempfile.TemporaryDirectory() as tmp:
        run = RunFolder(tmp)
        first, good0, best0 = judged_round(pipe, run, 0, seed=1)
        with FeedbackLog(run.feedback_db) as log:
            log.record_round(0, PROMPT, good0, best0, "web")
        images, good, _ = judged_round(pipe, run, 1, seed=2)
        web = WebFeedback(run.path, rounds_total=8, budget=512, port=0)
        url = web.start()
        threading.Thread(target=web.judge_round, args=(1, PROMPT, images, first[best0]), daemon=True).start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(url)
            page.locator('#grid .tile[data-i="63"] img').wait_for()
            marked = [i for i, g in enumerate(good) if g][:12]
            for i in marked:
                page.locator(f'#grid .tile[data-i="{i}"]').click()
            page.locator(f'#grid .tile[data-i="{marked[0]}"]').click(modifiers=["Shift"])
            page.mouse.move(0, 0)  # no hover effect in the picture
            page.wait_for_timeout(300)
            page.screenshot(path=str(args.out))
            browser.close()
        web.close(done=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
