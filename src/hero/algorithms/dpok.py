"""DPOK: Reinforcement Learning for Fine-tuning Text-to-Image Diffusion Models (Fan et al., NeurIPS 2023).

DPOK maximises the reward with a KL penalty to the pretrained model. Per sampled denoising step k of
trajectory i (K per trajectory, as in DDPO), the loss is

    L = max(−A·ρ, −A·clip(ρ, 1 − c, 1 + c)) + β·mean_d (ε̂_θ(x_k, t_k) − ε̂_pre(x_k, t_k))²,
    A = clip(α·(r_i − V(x_k, t_k)), ±adv_clip),   ρ = π_θ(x_{k+1} | x_k) / π_old(x_{k+1} | x_k),

averaged over the samples and steps of the update:
- the KL term: between two DDIM Gaussians with the same σ, KL = ‖μ_θ − μ_pre‖²/2σ², proportional to the
  squared difference of the predicted noise; DPOK uses that ε-MSE. ε̂_pre is the *same* UNet with the LoRA
  adapter disabled (no copy of the model), under no_grad. Outputs of v- or x₀-predicting UNets are converted
  to ε̂ first, and the guided (CFG) prediction is used: it is the one that defines the sampling policy;
- the value baseline V(x_t, t): a small CNN over the latent plus a timestep embedding, fitted by MSE to the
  reward on the round's stored latents (every step of every trajectory) *before* the policy step, as DPOK
  interleaves value and policy updates. Unlike DDPO, A is not standardised per batch: the baseline does the
  centring, α (``dpok.reward_weight``) the scaling.
r_i is the source's graded score when it gives one, else good = 1 / not good = 0 (as for DDPO).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hero.algorithms.base import LoraPolicy
from hero.algorithms.ddpo import ddpo_rewards
from hero.distributed import SINGLE, Dist
from hero.feedback.base import RoundFeedback
from hero.models.ddim import gaussian_log_prob
from hero.models.denoiser import Denoiser
from hero.models.families import as_denoiser
from hero.policy_gradient import (
    accumulation_schedule,
    clip_and_step,
    clipped_surrogate_loss,
    pass_batches,
    trainable_steps,
)
from hero.rollout import Trajectories
from hero.settings import PolicyGradientSettings


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (N, dim) of integer timesteps (N,), as in the diffusion UNets."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ValueNet(nn.Module):
    """V(x_t, t): conv features of the latent, shifted by a timestep embedding, pooled to one number."""

    def __init__(self, in_channels: int, width: int = 32, t_dim: int = 32):
        super().__init__()
        self.t_dim = t_dim
        self.stem = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.time = nn.Sequential(nn.Linear(t_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1))
        nn.init.zeros_(self.body[-1].weight)  # V = 0 until trained: round 0's first baseline adds no noise
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(N,) values for latents (N, C, H, W) at timesteps (N,)."""
        h = self.stem(x.float()) + self.time(timestep_embedding(t, self.t_dim))[:, :, None, None]
        return self.body(h).squeeze(-1)


def value_data(traj: Trajectories, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, r) for every step of every trajectory: latents (N·T, C, H, W), timesteps (N·T,), rewards (N·T,)."""
    n, steps = traj.log_probs.shape
    x = traj.latents[:, :steps].flatten(0, 1)  # the state each transition starts from
    return x, traj.timesteps.cpu().repeat(n), rewards.float().repeat_interleave(steps)


def train_value(value: ValueNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor,
                r: torch.Tensor, epochs: int, batch_size: int, generator: torch.Generator) -> dict[str, float]:
    """Fit V to the rewards by MSE; returns the MSE over the data before and after."""
    def mse() -> float:
        with torch.no_grad():
            return float(torch.cat([(value(x[i], t[i]) - r[i]) ** 2
                                    for i in torch.arange(len(x)).split(batch_size)]).mean())

    before = mse()
    for _ in range(epochs):
        for mb in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = ((value(x[mb], t[mb]) - r[mb]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {"value_mse_before": before, "value_mse_after": mse() if epochs else before}


def step_terms(model: Denoiser, traj: Trajectories, idx: torch.Tensor, steps: torch.Tensor,
               sampled_uncond: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π_θ of the stored transitions with grad, ε-MSE to the adapter-free UNet) per sample, (B,) each.

    The log-prob is computed with the sampler's own functions (as ``step_log_prob`` does), so unchanged
    weights reproduce the stored log-probs exactly; one forward pass serves both terms. ``sampled_uncond``: the
    trained pass takes the unconditional half from the rollout where it kept it (``step_log_prob``).
    """
    device = model.network.device
    x, x_prev = traj.latents[idx, steps].to(device), traj.latents[idx, steps + 1].to(device)
    t = traj.timesteps.cpu()[steps].to(device)
    cond, uncond = traj.prompt_embeds[idx].to(device), traj.negative_prompt_embeds[idx].to(device)
    # The pretrained reference first: toggling the adapter changes requires_grad flags.
    with torch.no_grad(), model.base_model():
        eps_ref = model.noise_estimate(model.prediction(x, t, cond, uncond, traj.guidance_scale), x,
                                       traj.timesteps, steps)
    kept = traj.kept_uncond(idx, steps) if sampled_uncond else None
    out = model.prediction(x, t, cond, uncond, traj.guidance_scale, uncond_output=kept)
    mu, sigma = model.posterior(out, x, traj.timesteps, steps, traj.eta)
    eps = model.noise_estimate(out, x, traj.timesteps, steps)
    kl = ((eps - eps_ref) ** 2).mean(dim=tuple(range(1, x.ndim)))
    return gaussian_log_prob(x_prev, mu, sigma), kl


def dpok_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, kl: torch.Tensor,
              clip_range: float, kl_weight: float) -> torch.Tensor:
    """Clipped surrogate on the advantages + kl_weight · mean ε-MSE."""
    return clipped_surrogate_loss(logp, logp_old, advantages, clip_range) + kl_weight * kl.mean()


def _dpok_pass(model: Denoiser, traj: Trajectories, parts: list[tuple[torch.Tensor, torch.Tensor, float]],
               advantages: torch.Tensor, cfg: PolicyGradientSettings, kl_weight: float,
               stats: dict[str, list[float]]) -> None:
    """One forward and backward over ``parts``' (minibatch, steps, weight): Σ weight · DPOK loss."""
    device = model.network.device
    sizes = [len(mb) for mb, _, _ in parts]
    idx, steps = torch.cat([mb for mb, _, _ in parts]), torch.cat([s for _, s, _ in parts])
    logps, kls = (x.split(sizes) for x in step_terms(model, traj, idx, steps, cfg.sampled_uncond))
    total = 0.0
    for (mb, s, weight), logp, kl in zip(parts, logps, kls, strict=True):
        logp_old = traj.log_probs[mb, s].to(device)
        loss = dpok_loss(logp, logp_old, advantages[mb, s].to(device), kl, cfg.clip_range, kl_weight)
        total = total + loss * weight  # mean over the group's samples and K steps
        with torch.no_grad():
            diff = logp - logp_old
            stats["loss"].append(loss.item())
            stats["kl"].append(kl.mean().item())
            stats["approx_kl"].append(0.5 * (diff**2).mean().item())
            stats["clipfrac"].append(((diff.exp() - 1).abs() > cfg.clip_range).float().mean().item())
    total.backward()


def dpok_update(model: Denoiser, traj: Trajectories, advantages: torch.Tensor, optimizer: torch.optim.Optimizer,
                cfg: PolicyGradientSettings, kl_weight: float, generator: torch.Generator,
                dist: Dist = SINGLE) -> dict[str, float]:
    """One DPOK policy update; ``advantages`` (N, T) are per trajectory and step (baseline already applied).

    ``cfg.batch_timesteps`` runs each optimiser step's minibatches × K steps in one network pass (the same loss).

    ``model``: the trainer's ``Denoiser`` (with its precision), or a bare pipeline (fp32).
    """
    model = as_denoiser(model)
    stats: dict[str, list[float]] = {"loss": [], "kl": [], "approx_kl": [], "clipfrac": [], "grad_norm": []}
    optimizer.zero_grad(set_to_none=True)
    passes = 0
    for group in accumulation_schedule(len(traj), trainable_steps(model, traj, cfg.min_sigma), cfg, generator, dist):
        for parts in pass_batches(group, cfg.batch_timesteps):
            _dpok_pass(model, traj, parts, advantages, cfg, kl_weight, stats)
            passes += 1
        stats["grad_norm"].append(clip_and_step(optimizer, cfg.max_grad_norm, dist, model.precision.scaler))
    out = {key: float(np.mean(v)) for key, v in stats.items()}
    return {**out, "grad_steps": len(stats["grad_norm"]), "backward_passes": len(stats["loss"]),
            "network_passes": passes}


class DPOKTrainer:
    """DPOK on the shared engine: value baseline + clipped policy gradient + KL to the adapter-free UNet."""

    name = "dpok"

    def __init__(self, cfg, pipe, dist: Dist = SINGLE):
        self.cfg, self.settings = cfg, cfg.dpok
        self.policy = LoraPolicy(cfg, pipe, dist=dist)
        self.model = self.policy.model  # the round loop samples with it
        self.value = ValueNet(self.model.latent_shape(1)[1])
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=self.settings.value_lr)
        self.best_image: np.ndarray | None = None

    def start_noise(self, round_index: int, n: int, generator: torch.Generator) -> torch.Tensor | None:
        return None  # plain N(0, I)

    def current_best_image(self) -> np.ndarray | None:
        return self.best_image  # shown to a person for continuity; DPOK does not use the best pick

    def advantages(self, traj: Trajectories, rewards: torch.Tensor) -> torch.Tensor:
        """A (N, T) = clip(α·(r − V(x_t, t)), ±adv_clip) for every stored step."""
        x, t, r = value_data(traj, rewards)
        with torch.no_grad():
            v = torch.cat([self.value(x[i], t[i]) for i in torch.arange(len(x)).split(self.settings.value_batch_size)])
        adv = self.settings.reward_weight * (r - v)
        return adv.clamp(-self.policy.pg.adv_clip, self.policy.pg.adv_clip).view(traj.log_probs.shape)

    def learn(self, round_index: int, traj: Trajectories, feedback: RoundFeedback,
              generator: torch.Generator) -> dict[str, float]:
        t0 = time.perf_counter()
        if feedback.best is not None:
            self.best_image = traj.images[feedback.best]
        rewards = ddpo_rewards(feedback)
        value_stats = train_value(self.value, self.value_opt, *value_data(traj, rewards),
                                  epochs=self.settings.value_epochs, batch_size=self.settings.value_batch_size,
                                  generator=generator)
        adv = self.advantages(traj, rewards)
        t1 = time.perf_counter()
        stats = dpok_update(self.model, traj, adv, self.policy.optimizer, self.policy.pg,
                            self.settings.kl_weight, generator, dist=self.policy.dist)
        t2 = time.perf_counter()
        return {**value_stats, **{f"dpok_{k}": v for k, v in stats.items()}, "reward_mean": float(rewards.mean()),
                "seconds_representation": t1 - t0, "seconds_update": t2 - t1}

    def save(self, folder: Path) -> None:
        self.policy.save(folder, {"value": self.value.state_dict(), "value_opt": self.value_opt.state_dict(),
                                  "best_image": self.best_image})

    def load(self, folder: Path) -> None:
        state = self.policy.load(folder)
        self.value.load_state_dict(state["value"])
        self.value_opt.load_state_dict(state["value_opt"])
        self.best_image = state["best_image"]
