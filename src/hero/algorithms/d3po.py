"""D3PO: Using Human Feedback to Fine-tune Diffusion Models without Any Reward Model (Yang et al., CVPR 2024).

No reward model: the images of a round come in pairs that share a starting noise z_T (the DDIM step noise
differs, η > 0), the person (or judge) says which of each pair is better, and every denoising step of the
winner and of the loser is treated like a DPO decision. For K sampled step indices k per pair (the same k for
winner and loser),

    L = −log σ(β·(log ρ_w,k − log ρ_l,k)),   ρ_·,k = clamp(π_θ(x_{k+1} | x_k) / π_ref(x_{k+1} | x_k), 1 − c, 1 + c),

with β = 0.1, c = 0.1, averaged over pairs and steps. As the clamp is outside the log, a step whose ratio has
left [1 − c, 1 + c] stops contributing gradient: the update cannot move far from the reference in one round.

Reference choice. π_ref is the model at the start of the round, i.e. the model that sampled it, so log π_ref
is exactly the stored rollout log-prob (``Trajectories.log_probs``): no second UNet and no extra forward pass,
and the ratio starts at exactly 1 in every round. The alternative, the UNet with the adapter disabled, would
be the *pretrained* model: a fixed anchor, but one extra forward pass per step, and once the LoRA has moved
over a few rounds the ratios to it sit outside [1 − c, 1 + c] on many steps, where the clamp gives no gradient
and learning stalls. The round-start reference is the one the project brief asks for (docs/d3po.md).

Feedback: each image judged is one feedback (a pair = 2). The web page asks for pairs (its pairwise mode,
``hero.web.pairs``); a source without ``judge_pairs`` answers with good/best marks, and the pairs are derived
within each noise-sharing pair: the best image beats its partner, a good image beats a not-good one, otherwise
no preference.

Offline workflow (sample → annotate → train): ``hero sample --pairs``, ``hero label`` or a hand-written JSON
file, ``hero train --algo d3po --from-annotations FILE`` (``hero.algorithms.d3po_offline``; the file format:
``hero.feedback.annotations``, which also reads the ``pairs.jsonl`` written by ``hero export``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hero.algorithms.base import LoraPolicy
from hero.distributed import SINGLE, Dist
from hero.feedback.annotations import comparison_pairs
from hero.feedback.base import RoundFeedback
from hero.models.denoiser import Denoiser
from hero.models.families import as_denoiser
from hero.policy_gradient import accumulation_schedule, clip_and_step, pass_batches, trainable_steps
from hero.rollout import Trajectories, step_log_prob
from hero.settings import PolicyGradientSettings


def paired_noise(n: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """z_T for n images, shared pairwise: [z0, z0, z1, z1, ...] (an odd last image gets its own)."""
    z = torch.randn(((n + 1) // 2, *shape), generator=generator)
    return z.repeat_interleave(2, dim=0)[:n]


def pairs_from_marks(good: list[bool], best: int | None, candidates: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(winner, loser) within each candidate pair from good/best marks: best wins, then good beats not good."""
    out = []
    for i, j in candidates:
        if best in (i, j):
            out.append((best, j if best == i else i))
        elif good[i] != good[j]:
            out.append((i, j) if good[i] else (j, i))
    return out


def d3po_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
              beta: float, ratio_clip: float) -> torch.Tensor:
    """Mean of −log σ(β·(log ρ_w − log ρ_l)), ρ = clamp(exp(logp − logp_ref), 1 − c, 1 + c)."""
    rho_w = torch.clamp(torch.exp(logp_w - ref_w), 1.0 - ratio_clip, 1.0 + ratio_clip)
    rho_l = torch.clamp(torch.exp(logp_l - ref_l), 1.0 - ratio_clip, 1.0 + ratio_clip)
    # logsigmoid rather than log(sigmoid(.)): the same value, without underflow for large negative margins.
    return -F.logsigmoid(beta * (torch.log(rho_w) - torch.log(rho_l))).mean()


def _pairs_pass(model: Denoiser, traj: Trajectories, pairs: torch.Tensor,
                parts: list[tuple[torch.Tensor, torch.Tensor, float]], beta: float, ratio_clip: float,
                sampled_uncond: bool, stats: dict[str, list[float]]) -> None:
    """One forward and backward over ``parts``' (minibatch of pairs, steps, weight): Σ weight · D3PO loss."""
    device = model.network.device
    sizes = [len(mb) for mb, _, _ in parts]
    steps = torch.cat([s for _, s, _ in parts])
    # Every part's winners, then every part's losers, each at its own step index: one batched network pass.
    idx = torch.cat([torch.cat([pairs[mb, 0] for mb, _, _ in parts]), torch.cat([pairs[mb, 1] for mb, _, _ in parts])])
    ss = torch.cat([steps, steps])
    logp = step_log_prob(model, traj, idx, ss, sampled_uncond=sampled_uncond)
    ref = traj.log_probs[idx, ss].to(device)
    lw, ll = (x.split(sizes) for x in logp.chunk(2))
    rw, rl = (x.split(sizes) for x in ref.chunk(2))
    total = 0.0
    for (_, _, weight), logp_w, logp_l, ref_w, ref_l in zip(parts, lw, ll, rw, rl, strict=True):
        loss = d3po_loss(logp_w, logp_l, ref_w, ref_l, beta, ratio_clip)
        total = total + loss * weight  # mean over the group's pairs and K steps
        with torch.no_grad():
            diff = torch.cat([logp_w - ref_w, logp_l - ref_l])
            stats["loss"].append(loss.item())
            stats["clipfrac"].append((diff.exp().sub(1).abs() > ratio_clip).float().mean().item())
            stats["margin"].append(((logp_w - ref_w) - (logp_l - ref_l)).mean().item())
    total.backward()


def d3po_update(model: Denoiser, traj: Trajectories, pairs: list[tuple[int, int]], optimizer: torch.optim.Optimizer,
                cfg: PolicyGradientSettings, beta: float, ratio_clip: float,
                generator: torch.Generator, dist: Dist = SINGLE) -> dict[str, float]:
    """One D3PO update over a round's (winner, loser) pairs; minibatches of ``cfg.batch_size`` pairs.

    ``cfg.batch_timesteps`` runs each optimiser step's minibatches × K steps in one network pass (the same loss).

    ``model``: the trainer's ``Denoiser`` (with its precision), or a bare pipeline (fp32).
    """
    stats: dict[str, list[float]] = {"loss": [], "clipfrac": [], "margin": [], "grad_norm": []}
    if not pairs:  # every pair a tie: nothing to learn from this round
        return {"loss": float("nan"), "clipfrac": float("nan"), "margin": float("nan"), "grad_norm": 0.0,
                "grad_steps": 0, "backward_passes": 0, "network_passes": 0}
    p = torch.tensor(pairs, dtype=torch.long)
    model = as_denoiser(model)
    optimizer.zero_grad(set_to_none=True)
    steps = trainable_steps(model, traj, cfg.min_sigma)  # per-step DPO: the same σ floor as DDPO's
    passes = 0
    for group in accumulation_schedule(len(p), steps, cfg, generator, dist):
        for parts in pass_batches(group, cfg.batch_timesteps):
            _pairs_pass(model, traj, p, parts, beta, ratio_clip, cfg.sampled_uncond, stats)
            passes += 1
        stats["grad_norm"].append(clip_and_step(optimizer, cfg.max_grad_norm, dist, model.precision.scaler))
    out = {key: float(np.mean(v)) for key, v in stats.items()}
    return {**out, "grad_steps": len(stats["grad_norm"]), "backward_passes": len(stats["loss"]),
            "network_passes": passes}


class D3POTrainer:
    """D3PO on the shared engine: noise-sharing pairs, pairwise preferences, the per-step DPO loss on the LoRA."""

    name = "d3po"
    feedback_kind = "pairs"

    def __init__(self, cfg, pipe, dist: Dist = SINGLE):
        self.cfg, self.settings = cfg, cfg.d3po
        self.policy = LoraPolicy(cfg, pipe, dist=dist)
        res = cfg.sampler.resolution
        self.model = self.policy.model  # the round loop samples with it
        self.latent_shape = self.model.latent_shape(1, res, res)[1:]  # as ``rollout`` sizes its latents
        self.best_image: np.ndarray | None = None

    def start_noise(self, round_index: int, n: int, generator: torch.Generator) -> torch.Tensor | None:
        return paired_noise(n, self.latent_shape, generator)

    def comparison_pairs(self, n: int) -> list[tuple[int, int]]:
        """The (i, j) pairs to be compared in a round of n images."""
        return comparison_pairs(n)

    def current_best_image(self) -> np.ndarray | None:
        return self.best_image  # only when a good/best source (the web page) stands in for pairs

    def learn(self, round_index: int, traj: Trajectories, feedback: RoundFeedback,
              generator: torch.Generator) -> dict[str, float]:
        t0 = time.perf_counter()
        pairs = feedback.pairs
        if pairs is None:  # good/best marks (the web page): derive preferences within the noise-sharing pairs
            pairs = pairs_from_marks(feedback.good, feedback.best, comparison_pairs(len(traj)))
            if feedback.best is not None:
                self.best_image = traj.images[feedback.best]
        t1 = time.perf_counter()
        stats = d3po_update(self.model, traj, list(pairs), self.policy.optimizer, self.policy.pg,
                            self.settings.beta, self.settings.ratio_clip, generator, dist=self.policy.dist)
        t2 = time.perf_counter()
        return {**{f"d3po_{k}": v for k, v in stats.items()}, "preference_pairs": len(pairs),
                "seconds_representation": t1 - t0, "seconds_update": t2 - t1}

    def save(self, folder: Path) -> None:
        self.policy.save(folder, {"best_image": self.best_image})

    def load(self, folder: Path) -> None:
        self.best_image = self.policy.load(folder)["best_image"]
