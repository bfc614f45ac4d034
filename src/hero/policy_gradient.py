"""DDPO core: PPO-style clipped policy gradient over stored DDIM trajectories, LoRA parameters only."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hero.distributed import SINGLE, Dist
from hero.lora import lora_parameters
from hero.models.denoiser import Denoiser
from hero.models.families import as_denoiser
from hero.precision import LossScale
from hero.rollout import Trajectories, step_log_prob
from hero.settings import PolicyGradientSettings

__all__ = ["accumulation_schedule", "clip_and_step", "clipped_surrogate_loss",
           "make_optimizer", "pass_batches", "policy_gradient_update", "standardise_advantages",
           "trainable_steps"]


# AdamW's settings for every adapter here (the papers' DDPO values); the rate is each method's own.
ADAM_BETAS, ADAM_EPS, WEIGHT_DECAY = (0.9, 0.999), 1e-8, 1e-4


def standardise_advantages(rewards: Sequence[float] | np.ndarray | torch.Tensor, prompts: Sequence[str] | None = None,
                           clip: float = 5.0) -> torch.Tensor:
    """(r − mean)/std over the batch, or per prompt when ``prompts`` is given, clipped to ±clip (fp32)."""
    r = torch.as_tensor(np.asarray(rewards, dtype=np.float64)).reshape(-1)

    def z(x: torch.Tensor) -> torch.Tensor:
        # Population std, as in DDPO; equal rewards give zero advantage rather than NaN.
        return (x - x.mean()) / (x.std(unbiased=False) + 1e-8)

    adv = z(r)
    if prompts is not None:
        if len(prompts) != len(r):
            raise ValueError(f"{len(prompts)} prompts for {len(r)} rewards")
        for p in set(prompts):
            mask = torch.tensor([q == p for q in prompts])
            if mask.sum() >= 2:  # a lone sample has no spread of its own: keep its batch-level advantage
                adv[mask] = z(r[mask])
    return adv.clamp(-clip, clip).float()


def clipped_surrogate_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                           clip_range: float) -> torch.Tensor:
    """PPO loss mean(max(−A·ρ, −A·clip(ρ, 1−c, 1+c))) with ρ = exp(logp_new − logp_old)."""
    ratio = torch.exp(logp_new - logp_old)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean()


def make_optimizer(unet, lr: float) -> torch.optim.AdamW:
    """AdamW at rate ``lr`` over the UNet's trainable LoRA parameters (call ``hero.lora.add_lora`` first)."""
    params = [p for p in lora_parameters(unet) if p.requires_grad]
    if not params:
        raise ValueError("the UNet has no trainable LoRA parameters: call hero.lora.add_lora(unet) first")
    return torch.optim.AdamW(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)


def _accumulation_groups(n: int, cfg: PolicyGradientSettings, generator: torch.Generator) -> list[list[torch.Tensor]]:
    """Shuffle samples into minibatches and group ``grad_accum`` minibatches per optimizer step."""
    minibatches = list(torch.randperm(n, generator=generator).split(cfg.batch_size))
    return [minibatches[i: i + cfg.grad_accum] for i in range(0, len(minibatches), cfg.grad_accum)]


def trainable_steps(model: Denoiser, traj: Trajectories, min_sigma: float) -> torch.Tensor:
    """Indices (int64) of the rollout's steps with σ ≥ ``min_sigma`` (the model's ``sigmas``): the ones a policy
    update may train.

    Raises a ValueError naming the setting when no step is left.
    """
    sigmas = model.sigmas(traj.timesteps, traj.eta)
    keep = torch.nonzero(sigmas >= min_sigma).flatten()
    if len(keep) == 0:
        raise ValueError(f"pg.min_sigma={min_sigma} leaves no denoising step to train (the largest σ is "
                         f"{float(sigmas.max()):.4g}): lower it")
    return keep


def accumulation_schedule(n: int, n_steps: int | torch.Tensor, cfg: PolicyGradientSettings,
                          generator: torch.Generator,
                          dist: Dist = SINGLE) -> Iterator[list[tuple[torch.Tensor, torch.Tensor, float]]]:
    """The DDPO training schedule shared by every policy update here.

    ``n_steps``: the number of denoising steps T (all trainable), or the indices of the trainable ones
    (``trainable_steps``). Per inner epoch each sample trains on its own K distinct trainable steps (a random
    permutation's first K); samples are shuffled into minibatches and ``grad_accum`` minibatches make one
    optimiser step. Yields, per optimiser step, (minibatch indices, their step indices, loss weight) for each
    minibatch × K, the weight making the accumulated gradient the mean over the group's samples and K steps.

    Data-parallel (``hero.distributed``, several processes): the draws are the same on every process, and each
    process gets every N-th (minibatch, step) of a group with its weight × N (possibly none: it still calls
    ``clip_and_step``, which averages the gradients over the processes, so the step is the one-process step).
    """
    allowed = torch.arange(n_steps) if isinstance(n_steps, int) else torch.as_tensor(n_steps, dtype=torch.long)
    k = min(cfg.timesteps_per_traj, len(allowed))
    for _ in range(cfg.inner_epochs):
        steps = torch.stack([allowed[torch.randperm(len(allowed), generator=generator)[:k]] for _ in range(n)])
        for group in _accumulation_groups(n, cfg, generator):
            n_group = sum(len(mb) for mb in group)
            yield dist.share([(mb, steps[mb, j], len(mb) / (n_group * k)) for mb in group for j in range(k)])


def pass_batches(group: list[tuple[torch.Tensor, torch.Tensor, float]],
                 batch_timesteps: bool) -> list[list[tuple[torch.Tensor, torch.Tensor, float]]]:
    """The network passes of one optimiser step's (minibatch, steps, weight) items: one pass each, or with
    ``batch_timesteps`` all of them in one pass (``pg.batch_timesteps``: the same sum of weighted losses)."""
    if not group:
        return []
    return [group] if batch_timesteps else [[item] for item in group]


def clip_and_step(optimizer: torch.optim.Optimizer, max_grad_norm: float, dist: Dist = SINGLE,
                  scaler: LossScale | None = None) -> float:
    """Clip the accumulated gradient's norm, take the optimiser step, clear; return the norm before clipping.

    Data-parallel: the gradients are first averaged over the processes (``hero.distributed``). fp16 (``scaler``,
    the trainer's ``model.precision.scaler``): they are first divided by the loss scale, and a non-finite gradient
    skips the step (the same on every process: the average is non-finite everywhere) and lowers the scale.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is not None:
        for p in params:
            if p.grad is not None:
                p.grad.div_(scaler.scale)
    dist.average_gradients(params)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if scaler is not None:
        scaler.update(math.isfinite(grad_norm))
    if scaler is None or math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _surrogate_pass(model: Denoiser, traj: Trajectories, parts: list[tuple[torch.Tensor, torch.Tensor, float]],
                    adv: torch.Tensor, cfg: PolicyGradientSettings, stats: dict[str, list[float]]) -> None:
    """One forward and backward over ``parts``' samples and steps, accumulating Σ weight · clipped loss per part."""
    device = model.network.device
    idx, steps = torch.cat([mb for mb, _, _ in parts]), torch.cat([s for _, s, _ in parts])
    logps = step_log_prob(model, traj, idx, steps, sampled_uncond=cfg.sampled_uncond).split(
        [len(mb) for mb, _, _ in parts])
    total = 0.0
    for (mb, s, weight), logp in zip(parts, logps, strict=True):
        logp_old = traj.log_probs[mb, s].to(device)
        loss = clipped_surrogate_loss(logp, logp_old, adv[mb].to(device), cfg.clip_range)
        total = total + loss * weight
        with torch.no_grad():
            diff = logp - logp_old
            stats["loss"].append(loss.item())
            stats["approx_kl"].append(0.5 * (diff**2).mean().item())
            stats["clipfrac"].append(((diff.exp() - 1).abs() > cfg.clip_range).float().mean().item())
    total.backward()


def policy_gradient_update(model: Denoiser, trajectories: Trajectories,
                           rewards: Sequence[float] | np.ndarray | torch.Tensor,
                           optimizer: torch.optim.Optimizer, cfg: PolicyGradientSettings,
                           generator: torch.Generator | None = None, dist: Dist = SINGLE) -> dict[str, float]:
    """One DDPO update on these trajectories; returns mean loss, approx_kl, clipfrac, grad_norm and counts.

    ``cfg.batch_timesteps`` runs each optimiser step's minibatch × K terms in one network pass,
    ``cfg.sampled_uncond`` runs the conditional CFG half only (``step_log_prob``).

    ``model``: the trainer's ``Denoiser`` (with its precision), or a bare pipeline (fp32).
    """
    traj = trajectories
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(0)
    prompts = traj.prompts if cfg.per_prompt_advantages else None
    adv = standardise_advantages(rewards, prompts, cfg.adv_clip)
    model = as_denoiser(model)
    stats: dict[str, list[float]] = {"loss": [], "approx_kl": [], "clipfrac": [], "grad_norm": []}
    optimizer.zero_grad(set_to_none=True)
    steps, passes = trainable_steps(model, traj, cfg.min_sigma), 0
    for group in accumulation_schedule(len(traj), steps, cfg, generator, dist):
        for parts in pass_batches(group, cfg.batch_timesteps):
            _surrogate_pass(model, traj, parts, adv, cfg, stats)
            passes += 1
        stats["grad_norm"].append(clip_and_step(optimizer, cfg.max_grad_norm, dist, model.precision.scaler))
    # Data-parallel: every process's passes (the grad norms are the same on all of them).
    stats.update(dist.merge_lists({k: stats[k] for k in ("loss", "approx_kl", "clipfrac")}))
    out = {key: float(np.mean(v)) for key, v in stats.items()}
    # backward_passes: (minibatch, timestep) terms; network_passes: this process's forward-backward calls.
    out.update(grad_steps=len(stats["grad_norm"]), backward_passes=len(stats["loss"]), network_passes=passes,
               reward_mean=float(np.mean(np.asarray(rewards, dtype=np.float64))))
    return out
