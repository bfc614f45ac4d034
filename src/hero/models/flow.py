"""The stochastic sampler of a rectified-flow model (SD 3/3.5), whose steps have a Gaussian log-prob.

A flow-matching model predicts the velocity v = ε − x₀ of the path x_σ = (1 − σ)·x₀ + σ·ε, σ from 1 (noise) to 0
(data); its usual sampler is the ODE dx = v dσ (Euler: x' = x + v·Δσ), deterministic, so it has no log-prob.
Flow-GRPO (Liu et al., 2025) samples the SDE with the same marginals instead. Derived here from the path:

- From x = (1 − σ)·x₀ + σ·ε and v = ε − x₀: x₀ = ε − v, so x = ε − (1 − σ)·v and E[ε | x] = x + (1 − σ)·v̂.
- The score of the noised marginal is ∇log p_σ(x) = −E[ε | x]/σ = −(x + (1 − σ)·v̂)/σ.
- Any diffusion s_σ ≥ 0 keeps the ODE's marginals when the drift gains −½·s_σ²·∇log p_σ (the reverse-time
  SDE family of Song et al., ICLR 2021): dx = [v̂ + s_σ²/(2σ)·(x + (1 − σ)·v̂)]·dσ + s_σ·dw, run with dσ < 0.
- With s_σ = a·√(σ/(1 − σ)) (Flow-GRPO's choice; a is the noise level, ``sampler.eta`` here, 0 the ODE),
  one Euler–Maruyama step from σ to σ' < σ is Gaussian:

      μ = x + [v̂ + s_σ²/(2σ)·(x + (1 − σ)·v̂)]·(σ' − σ),   std = s_σ·√(σ − σ').

At σ = 1 (the first step of SD 3's schedule) s_σ is infinite; there the noise scale uses the schedule's next σ
below 1 in the 1 − σ denominator, which keeps the first step finite. The mean and std depend only on the stored
σ's and the prediction, so a stored transition re-evaluates to a ratio of exactly 1.
"""

from __future__ import annotations

import torch

__all__ = ["flow_sigmas", "flow_sde_posterior", "flow_step_stds"]


def flow_sigmas(timesteps: torch.Tensor, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """σ (T,) of each step and σ' (T,) of the step after it (0 after the last), fp32 on the CPU.

    The flow schedulers' timesteps are σ × ``num_train_timesteps`` (``FlowMatchEulerDiscreteScheduler``).
    """
    sigma = timesteps.detach().float().cpu() / num_train_timesteps
    return sigma, torch.cat([sigma[1:], torch.zeros(1)])


def _noise_scale(sigma: torch.Tensor, sigma_cap: float, a: float) -> torch.Tensor:
    return a * (sigma / (1 - sigma.clamp(max=sigma_cap))).sqrt()


def _cap(sigma: torch.Tensor) -> float:
    """The largest σ below 1 in the schedule (the 1 − σ denominator's floor)."""
    below = sigma[sigma < 1]
    return float(below.max()) if len(below) else 0.5


def flow_step_stds(timesteps: torch.Tensor, num_train_timesteps: int, a: float) -> torch.Tensor:
    """std (T,) fp32 of each step of the SDE sampler with noise level ``a`` over these timesteps."""
    sigma, nxt = flow_sigmas(timesteps, num_train_timesteps)
    return _noise_scale(sigma, _cap(sigma), a) * (sigma - nxt).sqrt()


def flow_sde_posterior(velocity: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor, steps: torch.Tensor,
                       num_train_timesteps: int, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (B, ...) and std (B, 1, ...) fp32 of the SDE step from x at ``timesteps[steps]`` (steps: (B,)
    indices), as derived above.

    ``velocity``: the guided v̂ at x (B, ...). ``a`` = 0 gives the Euler step of the ODE, with std 0.
    """
    sigma_all, next_all = flow_sigmas(timesteps, num_train_timesteps)
    steps = steps.cpu()
    shape = (-1, *([1] * (x.ndim - 1)))
    sigma = sigma_all[steps].to(x.device).view(shape)
    nxt = next_all[steps].to(x.device).view(shape)
    s = _noise_scale(sigma, _cap(sigma_all), a)
    v, x = velocity.float(), x.float()
    mu = x + (v + s**2 / (2 * sigma) * (x + (1 - sigma) * v)) * (nxt - sigma)
    return mu, s * (sigma - nxt).sqrt()  # std (B, 1, ...), as the DDIM posterior's
