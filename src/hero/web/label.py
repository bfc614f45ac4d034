"""Offline annotation (``hero label RUN_DIR``) and export (``hero export RUN_DIR``) of a run's feedback.

``hero label`` serves, in order, every round whose images are in the run folder but whose feedback is not in
the log (e.g. a run stopped while waiting for a person); a later ``hero train --resume`` then learns from them
without asking again. The "current best" offered beside a round is the best of the latest earlier round that
chose one, as in training.

A pairwise run (``algo: d3po``) and a sample folder written by ``hero sample --pairs`` are labelled in the page's
pairwise mode (which image of each noise-sharing pair is better); for a sample folder the judgements are also
written as ``S/annotations.json``, the file ``hero train --algo d3po --from-annotations`` reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from hero.config import TrainConfig
from hero.feedback.annotations import comparison_pairs, read_sample_meta, write_annotations
from hero.runs.atomic import atomic_write_text
from hero.runs.feedback_log import FeedbackLog, RoundRecorder
from hero.runs.folder import RunFolder
from hero.web.server import WebFeedback

__all__ = ["export_run", "label_run", "pending_rounds", "sampled_rounds"]

_ROUND_DIR = re.compile(r"round_(\d+)")


def sampled_rounds(run: RunFolder) -> list[int]:
    """Rounds whose images are in the run folder, ascending."""
    found = []
    for d in (run.path / "rounds").glob("round_*"):
        m = _ROUND_DIR.fullmatch(d.name)
        if m and any((d / "images").glob("*.png")):
            found.append(int(m.group(1)))
    return sorted(found)


def pending_rounds(run_dir: str | Path) -> list[int]:
    """Sampled rounds without feedback in the log, ascending."""
    run = RunFolder(run_dir)
    with FeedbackLog(run.feedback_db) as log:
        done = set(log.rounds())
    return [r for r in sampled_rounds(run) if r not in done]


def _run_settings(run: RunFolder, prompt: str | None) -> tuple[str, int, int, TrainConfig | None]:
    """(prompt, rounds total, budget, config or None) of a run folder."""
    cfg = TrainConfig.from_yaml(run.config_path) if run.config_path.is_file() else None
    sample = read_sample_meta(run.path)  # a `hero sample --pairs` folder
    prompt = prompt or (cfg and (cfg.prompt or f"{len(cfg.prompt_list)} prompts")) or (sample or {}).get("prompt")
    if not prompt:
        raise ValueError(f"{run.path} has no config.yaml: pass --prompt")
    rounds = sampled_rounds(run)
    n_images = sum(len(list((run.round_dir(r) / "images").glob("*.png"))) for r in rounds)
    total = max(cfg.rounds if cfg else 0, (rounds[-1] + 1) if rounds else 0)
    return prompt, total, max(cfg.budget if cfg else 0, n_images), cfg


def label_run(run_dir: str | Path, host: str | None = None, port: int | None = None,
              allowed_hosts: Iterable[str] = (), prompt: str | None = None,
              on_ready: Callable[[str], None] = print) -> int:
    """Serve the run's unlabelled rounds in order until all are submitted; returns how many were labelled."""
    run = RunFolder(run_dir)
    if not (run.path / "rounds").is_dir():
        raise FileNotFoundError(f"{run.path} has no rounds/ folder: nothing to label")
    prompt, total, budget, cfg = _run_settings(run, prompt)
    pending = pending_rounds(run.path)
    if not pending:
        return 0
    web = cfg.web if cfg else None
    source = WebFeedback(run.path, total, budget, host=host or (web.host if web else "127.0.0.1"),
                         port=(web.port if web else 8765) if port is None else port,
                         allowed_hosts=[*allowed_hosts, *(web.allowed_hosts if web else [])], mode="label",
                         prompt=prompt)
    pairwise = (cfg is not None and cfg.pairwise) or read_sample_meta(run.path) is not None
    labelled = 0
    with source:
        on_ready(source.start())
        for r in pending:
            if source.session.log.get_round(r) is not None:
                continue  # labelled meanwhile (another `hero label`, or the trainer's page)
            images = run.round_images(r)
            record = RoundRecorder(source.session.log, r, prompt)  # this loop's only writer of round r
            bests = run.best_images_before(source.session.log, r)
            if pairwise:
                source.judge_pairs(r, prompt, images, comparison_pairs(len(images)), record=record)
            elif cfg is not None and cfg.prompt_set:  # the round's prompts, as the run sampled them
                source.judge_prompt_set(r, images, cfg.round_prompts(r, len(images)), bests, record=record)
            else:
                source.judge_round(r, prompt, images, bests.get(prompt), record=record)
            labelled += 1
    if read_sample_meta(run.path) is not None:
        write_annotations(run.path)
    return labelled


def export_run(run_dir: str | Path, out: str | Path | None = None) -> dict[str, int | str]:
    """Write ``feedback.jsonl`` (one line per judged image) and ``pairs.jsonl`` (winner beats loser)."""
    run = RunFolder(run_dir)
    if not run.feedback_db.is_file():
        raise FileNotFoundError(f"{run.path} has no feedback log (feedback.sqlite)")
    out = Path(out) if out is not None else run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    with FeedbackLog(run.feedback_db) as log:
        n_lines = log.export_jsonl(out / "feedback.jsonl")
        rounds = {fb.round: fb for fb in log.all_rounds()}
        pairs = log.preference_pairs()

    def rel(r: int, i: int) -> str:  # image paths relative to the run folder, so the export travels with it
        return run.image_path(r, i).relative_to(run.path).as_posix()

    lines = [json.dumps({"round": r, "prompt": rounds[r].image_prompt(w), "winner": w, "loser": lo,
                         "winner_image": rel(r, w), "loser_image": rel(r, lo)}) + "\n" for r, w, lo in pairs]
    atomic_write_text(out / "pairs.jsonl", "".join(lines))
    return {"feedback": n_lines, "pairs": len(lines), "out": str(out)}
