"""How many of a run's marks the toy-world judge disagrees with: the precision of what a likelihood method trains on.

With ``--feedback sim:0.1`` one mark in ten is flipped; RAFT (and HERO's likelihood update) trains on every image
marked good, so the share of those the judge rejects is the share of its pool that teaches the misses.

    .venv/bin/python benchmarks/pool_precision.py runs/s4/raft-sim01-s0 [RUN ...]
"""

from __future__ import annotations

import argparse

from hero.config import TrainConfig
from hero.runs.feedback_log import FeedbackLog
from hero.runs.folder import RunFolder
from hero.toyworld import Judge, parse_task


def pool_precision(run_dir: str) -> dict:
    """Marks against the judge, over every judged round of a single-prompt run."""
    run = RunFolder(run_dir)
    cfg = TrainConfig.from_yaml(run.config_path)
    task = parse_task(cfg.prompt, **cfg.task_options())
    log = FeedbackLog(run.feedback_db)
    counts = {"judged": 0, "marked_good": 0, "marked_good_judge_rejects": 0, "marked_not_good_judge_accepts": 0}
    try:
        for fb in log.all_rounds():
            if not fb.good:
                continue  # a pairwise round has no good marks
            verdicts = Judge().judge_batch(run.round_images(fb.round), task)
            for i, (mark, v) in enumerate(zip(fb.good, verdicts, strict=True)):
                good = bool(mark) or i == fb.best
                counts["judged"] += 1
                counts["marked_good"] += good
                counts["marked_good_judge_rejects"] += good and not v.good
                counts["marked_not_good_judge_accepts"] += (not good) and v.good
    finally:
        log.close()
    counts["precision"] = 1 - counts["marked_good_judge_rejects"] / max(1, counts["marked_good"])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    for run in parser.parse_args().runs:
        print(run, pool_precision(run))


if __name__ == "__main__":
    main()
