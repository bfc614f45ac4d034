"""DDIM with η > 0 as a Gaussian policy: the posterior N(μ, σ²I) of each step, its σ and its log-density.

For x_t with prediction f (ε, v or x₀ as the scheduler's ``prediction_type`` says) the step to x_{t-1} is

    μ = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev − σ²)·ε̂,   σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev))

(Song et al. 2021, eq. 12 and 16). The SD 1.x/2.x family and the pixel-space tiny-shapes sample with it
(``hero.models.denoiser``); all arithmetic is fp32, so a re-evaluated step reproduces the sampled log-prob.
"""

from __future__ import annotations

import math

import torch

from hero.precision import FP32, Precision, unet_output

__all__ = ["check_stochastic", "ddim_posterior", "gaussian_log_prob", "guidance_outputs", "min_snr_weight",
           "noise_from_output", "noised", "prediction_target", "step_alphas", "step_sigmas"]


def step_alphas(scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ᾱ_t and ᾱ_prev (T,) fp32; prev is the next timestep in the list, final_alpha_cumprod after the last."""
    abar = scheduler.alphas_cumprod.float().cpu()
    t = timesteps.long().cpu()
    # The next sampled timestep (not t - 1000 // T) so the posterior targets exactly the latent the next UNet
    # call sees; for evenly spaced schedules this is what DDIMScheduler.step uses too.
    abar_prev = torch.cat([abar[t[1:]], torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32)[None]])
    return abar[t], abar_prev


def check_stochastic(scheduler, timesteps: torch.Tensor, eta: float) -> None:
    """Refuse η > 0 schedules with a deterministic step (σ = 0): its log-prob would be NaN."""
    abar_t, abar_prev = step_alphas(scheduler, timesteps)
    if eta > 0 and not bool(((1 - abar_prev) * (1 - abar_t / abar_prev) > 0).all()):
        raise ValueError("a DDIM step has sigma = 0 (set_alpha_to_one=True makes the last step deterministic): "
                         "use DDIMScheduler(..., set_alpha_to_one=False) for trajectories with log-probs")


def guidance_outputs(unet, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                     guidance_scale: float, precision: Precision = FP32,
                     uncond_output: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(guided output, the unconditional half's output) in fp32; the second is None when guidance_scale ≤ 1.

    ``uncond_output``: the unconditional half as already computed (e.g. stored by the sampler): only the conditional
    half is run, and no gradient flows through the unconditional one (``pg.sampled_uncond``).
    """
    if guidance_scale <= 1.0:
        return unet_output(unet, x, t, cond, precision), None
    if uncond_output is None:
        # One batched call, [uncond; cond], as the diffusers pipelines do.
        out_uncond, out_cond = unet_output(unet, torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond]),
                                           precision).chunk(2)
    else:
        out_uncond, out_cond = uncond_output.to(x.device), unet_output(unet, x, t, cond, precision)
    return out_uncond + guidance_scale * (out_cond - out_uncond), out_uncond


def ddim_posterior(scheduler, out: torch.Tensor, x: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor,
               eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM posterior (μ, σ) of x_{t-1} given x_t; ᾱ's are per-sample (B,). All fp32."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    abar_t, abar_prev = abar_t.to(x.device).view(shape), abar_prev.to(x.device).view(shape)
    sqrt_a, sqrt_b = abar_t.sqrt(), (1 - abar_t).sqrt()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        eps = out
        x0 = (x - sqrt_b * eps) / sqrt_a
    elif kind == "v_prediction":  # v = √ᾱ·ε − √(1−ᾱ)·x₀
        x0 = sqrt_a * x - sqrt_b * out
        eps = sqrt_a * out + sqrt_b * x
    elif kind == "sample":
        x0 = out
        eps = (x - sqrt_a * x0) / sqrt_b
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}")
    if scheduler.config.get("thresholding", False):
        raise ValueError("dynamic thresholding is not supported by the trajectory sampler")
    if scheduler.config.get("clip_sample", False):  # like DDIMScheduler.step: clip x̂₀, keep ε̂
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)
    sigma = _sigma(abar_t, abar_prev, eta)
    mu = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
    return mu, sigma


def _sigma(abar_t: torch.Tensor, abar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM's σ_t = η·√((1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev))."""
    return eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).clamp(min=0).sqrt()


def step_sigmas(scheduler, timesteps: torch.Tensor, eta: float) -> torch.Tensor:
    """σ (T,) fp32 of each transition of a rollout with these timesteps and η: the sampler's own arithmetic.

    The policy-gradient updates use it to leave out near-deterministic steps (``pg.min_sigma``):
    on tiny-shapes the last DDIM step has σ = 0.0064, under one uint8 level, so its noise cannot change what a
    judge sees, yet its ∇ log p is ~30× the other steps' and would dominate the gradient.
    """
    return _sigma(*step_alphas(scheduler, timesteps), eta)


def gaussian_log_prob(x_prev: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(x_prev; μ, σ²) averaged over the non-batch dimensions (B,)."""
    lp = -((x_prev - mu) ** 2) / (2 * sigma**2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, x_prev.ndim)))


# --- the forward (training) process of a DDPM-trained model: the likelihood methods' noise and targets ------

def noised(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε for per-sample timesteps t (B,)."""
    a = _abar(scheduler, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def prediction_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet should output at x_t: ε, v = √ᾱ·ε − √(1−ᾱ)·x₀, or x₀ (``prediction_type``)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        a = _abar(scheduler, t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    if kind == "sample":
        return x0
    raise ValueError(f"unsupported prediction_type {kind!r}")


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Per-sample loss weight (B,) that turns the parameterisation's MSE into min(SNR, γ)-weighted x₀ error.

    SNR = ᾱ/(1 − ᾱ). ε-prediction: min(SNR, γ)/SNR; v-prediction: min(SNR, γ)/(SNR + 1); x₀: min(SNR, γ).
    ``gamma=None``: 1 (the plain MSE).
    """
    if gamma is None:
        return torch.ones(len(t))
    a = scheduler.alphas_cumprod.float().cpu()[t.long().cpu()]
    snr = a / (1 - a)
    clipped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    return {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[kind]


def noise_from_output(scheduler, out: torch.Tensor, x: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """ε̂ from a UNet output of any prediction type (per-sample ᾱ_t (B,)), as the DDIM posterior reads it."""
    a = abar_t.to(x.device).view(-1, *([1] * (x.ndim - 1)))
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return out
    if kind == "v_prediction":  # v = √ᾱ·ε − √(1−ᾱ)·x₀  ⇒  ε = √ᾱ·v + √(1−ᾱ)·x_t
        return a.sqrt() * out + (1 - a).sqrt() * x
    if kind == "sample":
        return (x - a.sqrt() * out) / (1 - a).sqrt()
    raise ValueError(f"unsupported prediction_type {kind!r}")


def _abar(scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = scheduler.alphas_cumprod.float().to(like.device)[t.long().to(like.device)]
    return a.view(-1, *([1] * (like.ndim - 1)))
