"""How much of one round's policy gradient is signal, on the built-in model.

    .venv/bin/python benchmarks/gradient_snr.py --n 64 --seed 0 [--steps 20 --eta 1.0 --rank 8] [--save F.pt]
    .venv/bin/python benchmarks/gradient_snr.py --pool F0.pt F1.pt ...   # rounds of one setting together
    .venv/bin/python benchmarks/gradient_snr.py --per-step --n 64 --seed 0 [--min-sigma 0.01]   # ρ per step

Samples one round (``--n`` images of "three green triangles", the demo sampler), judges it with the simulated
human, and computes every trajectory's gradient of its summed per-step log-prob w.r.t. a fresh LoRA (the demo's
rank and targets). At unchanged weights the PPO ratio is 1, so the round's policy gradient is
−mean_i A_i ∇log p_i with A the standardised reward. Reported (cosines between gradient vectors):

- ``per_image_snr`` ρ: |E c|² / E|c − E c|² for one image's contribution c_i = A_i ∇log p_i (the mean ∇log p
  removed), |E c|² estimated without bias from all pairs. A round of n images then has signal/noise nρ, its
  gradient's cosine with the true one is ≈ sqrt(nρ / (1 + nρ)), and a direction good to cosine 0.7 takes
  ≈ 1/ρ judged images.
- ``split_half``: the gradient from one half of the round vs from the other half (each half with its own mean
  advantage as baseline), averaged over random splits: a direct but noisier view of the same thing.
- ``label_vs_score``: the gradient with the binary good mark as reward (what a person gives, and what HERO's
  in-sample reward mostly encodes) vs with the judge's graded score (an oracle).
- ``step_vs_round``: one optimiser step's gradient (``--batch`` trajectories × K random steps each, as the
  update samples them) vs the whole round's (all trajectories, all steps), for K = 5 and K = all steps.

``--per-step``: the same per-image ρ for each denoising step s on its own (c_i = A_i (∇log p_{i,s} − mean_i)),
with σ_s, the mean ‖∇log p_s‖ and the step's share of Σ_s ‖∇log p_s‖², then ρ of the summed gradient over all
steps and over the steps a policy update trains (σ ≥ ``--min-sigma``, the engine's ``pg.min_sigma``).

The LoRA's B starts at zero, so at initialisation only B has a gradient: this is the direction of the first step.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F

from hero.lora import add_lora
from hero.models import load_pipeline
from hero.models.ddim import step_sigmas
from hero.models.denoiser import denoiser_for
from hero.policy_gradient import standardise_advantages
from hero.rollout import rollout, step_log_prob
from hero.toyworld import Judge, parse_task

PROMPT = "three green triangles"


def flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params]).clone()


def per_trajectory_grads(pipe, traj, params) -> torch.Tensor:
    """(N, P): ∇ Σ_s log p(x_{s+1} | x_s) of each trajectory, all steps in one batched pass."""
    n, steps = traj.log_probs.shape
    out = []
    for i in range(n):
        for p in params:
            p.grad = None
        logp = step_log_prob(denoiser_for(pipe), traj, [i] * steps, torch.arange(steps))
        logp.sum().backward()
        out.append(flat_grad(params))
    return torch.stack(out)


def per_step_grads(pipe, traj, params) -> torch.Tensor:
    """(N, T, P): ∇ log p(x_{s+1} | x_s) of each trajectory and step on its own."""
    n, steps = traj.log_probs.shape
    out = torch.empty(n, steps, sum(p.numel() for p in params))
    for i in range(n):
        for s in range(steps):
            for p in params:
                p.grad = None
            step_log_prob(denoiser_for(pipe), traj, [i], s).sum().backward()
            out[i, s] = flat_grad(params)
    return out


def per_step_table(pipe, traj, params, adv: torch.Tensor, min_sigma: float) -> dict:
    """ρ, σ, mean ‖∇log p‖ and share of Σ‖∇‖² per step; ρ of the sum over all steps and over σ ≥ min_sigma."""
    grads = per_step_grads(pipe, traj, params)  # (N, T, P)
    sigmas = step_sigmas(pipe.scheduler, traj.timesteps, traj.eta)
    sq = (grads.double() ** 2).sum(-1)  # (N, T)
    rows = [{"step": s, "sigma": float(sigmas[s]), "grad_norm": float(sq[:, s].sqrt().mean()),
             "share_of_sq_norm": float(sq[:, s].sum() / sq.sum()),
             "per_image_snr": per_image_snr(contributions(grads[:, s], adv))} for s in range(grads.shape[1])]
    keep = sigmas >= min_sigma
    return {"per_step": rows, "min_sigma": min_sigma, "steps_kept": int(keep.sum()),
            "per_image_snr_all_steps": per_image_snr(contributions(grads.sum(1), adv)),
            "per_image_snr_kept_steps": per_image_snr(contributions(grads[:, keep].sum(1), adv))}


def minibatch_grad(pipe, traj, params, adv: torch.Tensor, idx: list[int], k: int, rng: random.Random) -> torch.Tensor:
    """One optimiser step's gradient direction: ``idx`` trajectories, k random distinct steps each."""
    steps = traj.log_probs.shape[1]
    rows = [i for i in idx for _ in range(k)]
    cols = [s for _ in idx for s in rng.sample(range(steps), k)]
    for p in params:
        p.grad = None
    logp = step_log_prob(denoiser_for(pipe), traj, rows, torch.tensor(cols))
    (adv[rows] * logp).sum().backward()
    return flat_grad(params)


def per_image_snr(c: torch.Tensor) -> float:
    """ρ = |E c|² / E|c − E c|² from per-image contributions c_i (rows), |E c|² estimated without bias
    as the mean of c_i · c_j over pairs i ≠ j. A gradient summed over n images then has signal/noise nρ."""
    c = c.double()
    n, total = c.shape[0], c.sum(0)
    sq = (c * c).sum()
    pairs = (total @ total - sq) / (n * (n - 1))
    return float(pairs / (sq / n - pairs))


def contributions(grads: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """c_i = A_i (∇log p_i − mean): the mean ∇log p is noise too (zero in expectation), a batch baseline."""
    return adv[:, None] * (grads - grads.mean(0))


def round_quality(rho: float, n: int) -> dict:
    """What ρ means for a round of n images: cos(round gradient, true) ≈ √(nρ/(1+nρ)); cosine 0.7 needs nρ ≈ 1."""
    if rho <= 0:
        return {}
    return {"round_images": n, "cos_round_vs_true": math.sqrt(n * rho / (1 + n * rho)),
            "images_for_cos_0.7": round(1 / rho)}


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a[None].double(), b[None].double()).item())


def pool(paths: list[str]) -> dict:
    """Pool saved rounds (``--save`` files of one setting): ρ over all their images, cosines between rounds."""
    per_round = []
    for path in paths:
        saved = torch.load(path)
        per_round.append(contributions(saved["grads"], standardise_advantages(saved["rewards"]["label"])))
    rounds = [c.sum(0) for c in per_round]
    rho = per_image_snr(torch.cat(per_round))
    return {"rounds": len(paths), "images": sum(len(c) for c in per_round), "pooled_snr_label": rho,
            "round_vs_round": [cos(rounds[i], rounds[j]) for i in range(len(rounds)) for j in range(i)],
            **round_quality(rho, len(per_round[0]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="sampler steps (demo preset: 20)")
    ap.add_argument("--eta", type=float, default=1.0, help="DDIM eta (demo preset: 1.0)")
    ap.add_argument("--batch", type=int, default=8, help="trajectories per optimiser step (demo preset: 8)")
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    ap.add_argument("--save", default=None, help="save the per-trajectory gradients and rewards here (.pt)")
    ap.add_argument("--pool", nargs="+", default=None, metavar="PT", help="only pool these --save files and exit")
    ap.add_argument("--per-step", action="store_true", help="only the per-step table (N × T backward passes)")
    ap.add_argument("--min-sigma", type=float, default=0.01, help="the σ floor of --per-step's kept steps")
    args = ap.parse_args()
    if args.pool:
        print(json.dumps(pool(args.pool)))
        return

    torch.manual_seed(args.seed)
    pipe = load_pipeline("tiny-shapes")
    params = add_lora(pipe.unet, rank=args.rank, alpha=float(args.rank))
    with torch.no_grad():
        traj = rollout(pipe, [PROMPT] * args.n, guidance_scale=2.0, num_steps=args.steps, eta=args.eta, seed=args.seed,
                       batch_size=args.n)
    verdicts = Judge().judge_batch(traj.images, parse_task(PROMPT))
    rewards = {"label": [float(v.good) for v in verdicts], "score": [v.score for v in verdicts]}
    adv = {k: standardise_advantages(r) for k, r in rewards.items()}
    if args.per_step:
        table = {"n": args.n, "seed": args.seed, "rank": args.rank, "steps": args.steps,
                 **per_step_table(pipe, traj, params, adv["label"], args.min_sigma)}
        _emit(table, args.out)
        return
    grads = per_trajectory_grads(pipe, traj, params)  # (N, P)
    full = {k: (a[:, None] * grads).sum(0) for k, a in adv.items()}

    rng = random.Random(args.seed)
    result: dict = {"n": args.n, "seed": args.seed, "rank": args.rank, "steps": args.steps, "eta": args.eta,
                    "params": grads.shape[1], "good_rate": float(np.mean(rewards["label"])),
                    "label_vs_score": cos(full["label"], full["score"])}
    for k, a in adv.items():
        result[f"per_image_snr_{k}"] = per_image_snr(contributions(grads, a))
        halves = []
        for _ in range(args.splits):
            perm = torch.tensor(rng.sample(range(args.n), args.n))
            h1, h2 = perm[: args.n // 2], perm[args.n // 2:]
            # each half with its own baseline, as if it were a round of its own
            halves.append(cos(((a[h1] - a[h1].mean())[:, None] * grads[h1]).sum(0),
                              ((a[h2] - a[h2].mean())[:, None] * grads[h2]).sum(0)))
        result[f"split_half_{k}"] = float(np.mean(halves))
    result.update(round_quality(result["per_image_snr_label"], args.n))
    if args.save:
        torch.save({"grads": grads, "rewards": rewards, "args": vars(args)}, args.save)
    steps = traj.log_probs.shape[1]
    for k_steps in (5, steps):
        sims = [cos(minibatch_grad(pipe, traj, params, adv["label"], rng.sample(range(args.n), args.batch),
                                   k_steps, rng), full["label"]) for _ in range(8)]
        result[f"step_vs_round_label_k{k_steps}"] = float(np.mean(sims))
    _emit(result, args.out)


def _emit(result: dict, out: str | None) -> None:
    line = json.dumps(result)
    if out:
        with open(out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    sys.exit(main())
