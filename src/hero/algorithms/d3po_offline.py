"""D3PO offline: sample noise-sharing pairs once, annotate them, then train from the annotation file.

    hero sample --pairs --prompt P --n 16 --out S          S/sample.json, S/grid.png, S/rounds/round_000/...
    hero label S                                            the page's pairwise mode -> S/annotations.json
      (or write S/annotations.json by hand: hero.feedback.annotations describes the format)
    hero train --algo d3po --from-annotations S/annotations.json --out RUN

Why the sample folder is laid out as round 0 of a run folder (``rounds/round_000/images``, ``trajectories.pt``):
``hero label`` and ``hero export`` then work on it unchanged, and the trajectories (latents, timesteps, per-step
log-probs) sit where ``RunFolder.load_round`` finds them. D3PO needs them: its loss is a ratio of the current
model's step log-prob to the sampling model's, and with a fresh LoRA (identity) the sampling model *is* the
round-start reference, so the ratio starts at exactly 1 as in the online algorithm.

The run written by ``train_from_annotations`` is a normal one-round run folder (config.yaml, checkpoints/round_000,
metrics.jsonl, lora/), so ``hero eval RUN`` and ``pipe.load_lora_weights("RUN/lora")`` work. Its record of the
feedback is ``RUN/annotations.json`` (the validated judgements), not a feedback log: a hand-written file may judge
only some pairs, and the log can only count whole rounds.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hero.algorithms.base import round_generator
from hero.algorithms.d3po import D3POTrainer, paired_noise
from hero.config import ConfigError, TrainConfig, load_config, save_config
from hero.feedback.annotations import SAMPLE_META, Annotations, comparison_pairs, image_name, read_annotations
from hero.feedback.base import RoundFeedback
from hero.lora import save_lora
from hero.models import load_pipeline
from hero.models.families import denoiser_for
from hero.rollout import rollout
from hero.runs.atomic import atomic_write_text
from hero.runs.feedback_log import FeedbackLog, RoundRecorder
from hero.runs.folder import RunFolder
from hero.toyworld.scenes import image_grid

__all__ = ["sample_pairs", "train_from_annotations"]


def sample_pairs(pipe, prompt: str, n: int, out: str | Path, *, model: str, seed: int = 0, steps: int = 20,
                 eta: float = 1.0, guidance: float = 2.0, batch_size: int = 8) -> np.ndarray:
    """Sample n images in noise-sharing pairs with their trajectories into the sample folder ``out``; the images."""
    if n < 2 or n % 2:
        raise ValueError(f"--n {n}: with --pairs the number of images must be even (they are compared in pairs)")
    if eta <= 0:
        raise ValueError(f"--eta {eta}: D3PO needs eta > 0 (it learns from the log-probs of stochastic steps)")
    run = RunFolder(out)
    if (run.path / SAMPLE_META).exists() or run.round_dir(0).exists():
        raise FileExistsError(f"{run.path} already holds samples: choose another --out")
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = paired_noise(n, denoiser_for(pipe).latent_shape(1)[1:], generator)
    traj = rollout(pipe, [prompt] * n, guidance_scale=guidance, num_steps=steps, eta=eta, generator=generator,
                   start_noise=noise, batch_size=batch_size)
    run.save_round(0, traj)
    image_grid(traj.images).save(run.path / "grid.png")  # 8 per row: 4 pairs side by side, never split
    meta = {"prompt": prompt, "model": model, "n": n, "seed": seed, "steps": steps, "eta": eta,
            "guidance_scale": guidance, "images": "rounds/round_000/images",
            "pairs": [[image_name(i), image_name(j)] for i, j in comparison_pairs(n)]}
    atomic_write_text(run.path / SAMPLE_META, json.dumps(meta, indent=1) + "\n")
    return traj.images


def offline_config(ann: Annotations, preset: str | None, overrides: Sequence[str], **values) -> TrainConfig:
    """The run's config: the samples fix prompt, model and sampler; the CLI may not contradict them."""
    meta = ann.meta
    for key, given in (("prompt", values.get("prompt")), ("model", values.get("model"))):
        if given is not None and given != meta[key]:
            raise ConfigError(f"--{key} {given!r} differs from the samples' ({meta[key]!r}, in {ann.samples})")
    if values.get("algo") not in (None, "d3po"):
        raise ConfigError(f"--from-annotations trains D3PO: --algo {values['algo']} is not possible")
    sampler = {"steps": meta["steps"], "eta": meta["eta"], "guidance_scale": meta["guidance_scale"]}
    fixed = {**values, "prompt": meta["prompt"], "model": meta["model"], "algo": "d3po", "budget": ann.feedback,
             "images_per_round": ann.feedback}
    # Samples of few steps (a quick test) would fail the "K <= steps" check under the default K = 5: use every
    # step then, unless the user asked for a K explicitly (``--set pg.timesteps_per_traj``, checked as usual).
    k = min(load_config(preset, overrides, **fixed).pg.timesteps_per_traj, meta["steps"])
    cfg = load_config(preset, overrides, **fixed, sampler=sampler, pg={"timesteps_per_traj": k})
    for key, value in sampler.items():
        if getattr(cfg.sampler, key) != value:  # the trajectories were sampled so: `hero eval` must sample so too
            raise ConfigError(f"sampler.{key}={getattr(cfg.sampler, key)} differs from the samples' ({value})")
    return cfg


def train_from_annotations(path: str | Path, preset: str | None = None, overrides: Sequence[str] = (),
                           **values) -> RunFolder:
    """Train D3PO on the judgements in ``path`` (``values``: out, seed, ... as for ``load_config``); the run."""
    ann = read_annotations(path)
    cfg = offline_config(ann, preset, overrides, **values)
    run = RunFolder(cfg.out)
    if run.config_path.exists():
        raise FileExistsError(f"{run.path} already holds a run: choose another --out")
    traj = RunFolder(ann.samples).load_round(0)
    if traj is None or len(traj) != ann.meta["n"]:
        raise FileNotFoundError(f"{ann.samples} has no trajectories of its {ann.meta['n']} images "
                                "(rounds/round_000/trajectories.pt): sample again with `hero sample --pairs`")
    run.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config_path)
    record = {"source": str(Path(path).resolve()), "samples": str(ann.samples.resolve()), "feedback": ann.feedback,
              "pairs": [{"winner": image_name(w), "loser": image_name(lo)} for w, lo in ann.pairs],
              "ties": [[image_name(i), image_name(j)] for i, j in ann.ties]}
    atomic_write_text(run.path / "annotations.json", json.dumps(record, indent=1) + "\n")
    torch.manual_seed(cfg.seed)
    pipe = load_pipeline(cfg.model, device=cfg.device, model_config_dir=cfg.model_config_dir)
    algo = D3POTrainer(cfg, pipe)
    feedback = RoundFeedback(good=[], best=None, source="annotations", pairs=sorted(ann.pairs),
                             n_images=ann.feedback)
    # Imported into the run's feedback log as its round 0, so `hero export` lists these judgements as it lists an
    # online run's. The log's convention (the page's): a pair of the samples not listed is a tie, over all the
    # images shown.
    with FeedbackLog(run.feedback_db) as log:
        RoundRecorder(log, 0, cfg.prompt)(dataclasses.replace(feedback, n_images=ann.meta["n"]))
    t0 = time.perf_counter()
    stats = algo.learn(0, traj, feedback, round_generator(cfg.seed, 0, 2))  # as the online round 0 would
    folder = run.checkpoint_dir(0)
    folder.mkdir(parents=True, exist_ok=True)
    algo.save(folder)
    run.append_metrics({"round": 0, "images": ann.meta["n"], "feedback": ann.feedback, "good": None,
                        "good_rate": None, "best": None, "pairs": len(ann.pairs), "ties": len(ann.ties),
                        "seconds_learning": time.perf_counter() - t0, **stats})
    run.mark_checkpoint(0)
    save_lora(pipe, run.path / "lora")  # loadable with pipe.load_lora_weights(RUN/lora)
    return run
