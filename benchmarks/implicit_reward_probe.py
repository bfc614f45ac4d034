"""Can the model itself tell a wrong "good" mark? The implicit reward of each round's images, before training on them.

A likelihood method trained on marked-good images raises their likelihood over the base model's. If a wrong mark
(an image the person should have rejected) is what the trained model explains *less* well than the others, a
pool filter could drop it: the "small-loss" idea for noisy labels (Han et al., NeurIPS 2018), with the diffusion
model's implicit reward of Diffusion-DPO/KTO as the score,

    r(x₀) = mean over K paired draws (t, ε) of [ℓ_ref(x₀, t, ε) − ℓ_θ(x₀, t, ε)],

θ the model after round k − 1 and x₀ round k's images (sampled from θ, not yet trained on). This script measures
how well r separates the judge's good from not-good images of each round (AUC; 0.5: no signal). It reads a
finished run's checkpoints and round images; it trains nothing.

    .venv/bin/python benchmarks/implicit_reward_probe.py runs/s5/raft-cd01-s0 [--draws 8]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from hero.algorithms import make_algorithm
from hero.config import TrainConfig
from hero.likelihood import denoising_errors
from hero.models import load_pipeline
from hero.runs.folder import RunFolder
from hero.toyworld import Judge, parse_task


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (the Mann–Whitney U statistic over n⁺·n⁻)."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@torch.no_grad()
def implicit_rewards(algo, x0: torch.Tensor, cond: torch.Tensor, draws: int, gamma: float | None,
                     seed: int) -> np.ndarray:
    """r(x₀) per image: the base model's weighted denoising error minus the trained one's, on the same (t, ε)."""
    model = algo.model
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(x0))
    for _ in range(draws):
        t = model.training_timesteps(len(x0), g)
        noise = torch.randn(x0.shape, generator=g)
        for chunk in torch.arange(len(x0)).split(64):
            e = denoising_errors(model, x0[chunk], cond[chunk], noise[chunk], t[chunk], gamma, with_base=True)
            total[chunk] += (e.base - e.model).float().cpu()
    return (total / draws).numpy()


def probe(run_dir: str, draws: int) -> dict:
    run = RunFolder(run_dir)
    cfg = TrainConfig.from_yaml(run.config_path)
    task = parse_task(cfg.prompt, **cfg.task_options())
    pipe = load_pipeline(cfg.model, device=cfg.device, model_config_dir=cfg.model_config_dir)
    algo = make_algorithm(cfg, pipe)
    last = run.latest_round()
    algo.load(run.checkpoint_dir(last))
    # Copied out: loading an earlier checkpoint replaces the pool with that round's.
    every_round = list(algo.pool.latents)
    cond_all = torch.stack([algo.pool.embeds[p][0] for p in algo.pool.prompts])
    rows, all_scores, all_truth = [], [], []
    start = 0
    for k, latents in enumerate(every_round):
        n = len(latents)
        if k == 0 or k > last:
            start += n
            continue
        truth = np.array([v.good for v in Judge().judge_batch(run.round_images(k), task)])
        algo.load(run.checkpoint_dir(k - 1))
        scores = implicit_rewards(algo, latents, cond_all[start:start + n], draws, cfg.likelihood.min_snr_gamma,
                                  seed=k)
        rows.append({"round": k, "auc": auc(scores, truth), "good": int(truth.sum()), "n": n})
        all_scores.append(scores - np.median(scores))  # rounds differ in level; the filter would rank within one
        all_truth.append(truth)
        start += n
    scores, truth = np.concatenate(all_scores), np.concatenate(all_truth)
    return {"run": run_dir, "draws": draws, "auc_all_rounds": auc(scores, truth), "rounds": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--draws", type=int, default=8, help="paired (t, ε) draws per image")
    args = parser.parse_args()
    for run in args.runs:
        print(json.dumps(probe(run, args.draws)))


if __name__ == "__main__":
    main()
