"""Trajectory-centric DDIM sampler: every latent, timestep and per-step log-probability of a rollout.

The sampler is an explicit DDIM loop (η > 0) with classifier-free guidance. For each step it forms the
DDIM posterior N(μ, σ²I) over x_{t-1},

    μ = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev − σ²)·ε̂,   σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)),

samples x_{t-1} = μ + σ·ξ and records log N(x_{t-1}; μ, σ²) averaged over latent elements (fp32).
``step_log_prob`` re-evaluates a stored transition with the *same* code path, so with unchanged
weights the policy-gradient ratio is exactly 1.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from hero.runs.atomic import atomic_write_text

__all__ = ["LossScale", "Trajectories", "ddim_posterior", "decode_latents", "gaussian_log_prob", "guided_output",
           "loss_scale", "rollout", "step_alphas", "step_log_prob", "step_posterior", "step_sigmas", "to_uint8",
           "unet_autocast", "unet_output"]

_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LossScale:
    """Dynamic loss scaling for fp16 (``torch.amp.GradScaler``'s rule), applied at the UNet's boundary.

    Gradients entering a half-precision UNet call are multiplied by ``scale`` (so that small ones do not flush
    to zero in fp16) and those leaving it through its inputs are divided again; the LoRA gradients therefore
    arrive ``scale`` times too large, and ``policy_gradient.clip_and_step`` divides them before clipping. A
    non-finite gradient skips the optimiser step and halves the scale; ``growth_interval`` finite steps double it.
    """

    scale: float = 2.0**16
    growth_interval: int = 200
    good_steps: int = 0

    FILE = "loss_scale.json"  # in each checkpoint folder of an fp16 run, so --resume goes on at the same scale

    def save(self, folder: str | Path) -> None:
        atomic_write_text(Path(folder) / self.FILE, json.dumps({"scale": self.scale, "good_steps": self.good_steps}))

    def load(self, folder: str | Path) -> None:
        """Take the scale a checkpoint was written at (a checkpoint from before fp16 or this file: keep ours)."""
        path = Path(folder) / self.FILE
        if path.is_file():
            state = json.loads(path.read_text())
            self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale, self.good_steps = self.scale / 2, 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0


_PRECISION: ContextVar[tuple[torch.dtype | None, LossScale | None]] = ContextVar("hero_unet_precision",
                                                                                  default=(None, None))


@contextlib.contextmanager
def unet_autocast(precision: str | None) -> Iterator[None]:
    """Mixed precision for the engine's UNet calls (rollout, ``step_log_prob``, ``step_posterior``).

    "bf16"/"fp16": each UNet forward runs under ``torch.autocast`` in that dtype, and its output is cast back to
    fp32 before the DDIM posterior, so log-probs, latents and ratios stay fp32; trainable LoRA parameters stay
    fp32 (``hero.lora.add_lora``), their gradients too. "fp16" also scales the gradients that cross the UNet
    (``LossScale``; bf16 has fp32's range and needs none). "fp32" or None: nothing changes. ``hero.train`` wraps
    the round loop in it with the run's ``precision``.
    """
    if precision not in (None, "fp32", *_HALF):
        raise ValueError(f"precision={precision!r}: expected one of fp32, bf16, fp16")
    token = _PRECISION.set((_HALF.get(precision), LossScale() if precision == "fp16" else None))
    try:
        yield
    finally:
        _PRECISION.reset(token)


def loss_scale() -> LossScale | None:
    """The fp16 loss scale in force (inside ``unet_autocast("fp16")``), else None."""
    return _PRECISION.get()[1]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _ScaleGrad.apply(x, factor) if torch.is_grad_enabled() and x.requires_grad else x


def _unet_call(unet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """unet(x, t, context).sample in fp32, under the precision in force (``unet_autocast``)."""
    half, scaler = _PRECISION.get()
    if half is None:
        return unet(x.to(unet.dtype), t, encoder_hidden_states=context.to(unet.dtype)).sample.float()
    if scaler is not None:  # gradients leave through the inputs unscaled again
        x, context = _scale_grad(x, 1.0 / scaler.scale), _scale_grad(context, 1.0 / scaler.scale)
    with torch.autocast(x.device.type, dtype=half):
        out = unet(x.to(unet.dtype), t, encoder_hidden_states=context.to(unet.dtype)).sample.float()
    return out if scaler is None else _scale_grad(out, scaler.scale)


def unet_output(unet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """One unguided UNet prediction (fp32) at per-sample timesteps t (B,), under the precision in force
    (``unet_autocast``): for the likelihood updates (``hero.likelihood``), which train on single predictions."""
    out = _unet_call(unet, x, t, context)
    return out[:, : x.shape[1]] if out.shape[1] == 2 * x.shape[1] else out  # learned variance: keep the mean


@dataclass
class Trajectories:
    """A batch of sampled denoising trajectories (index 0 of ``latents`` is z_T, index T the final latent)."""

    prompts: list[str]
    start_noise: torch.Tensor  # (N, C, H, W) z_T as drawn (or given), before init_noise_sigma scaling
    latents: torch.Tensor  # (N, T+1, C, H, W) fp32: x_T, x_{T-1}, ..., x_0
    timesteps: torch.Tensor  # (T,) int64, the UNet timestep of each transition latents[:, i] -> latents[:, i+1]
    log_probs: torch.Tensor  # (N, T) fp32 log-prob of each chosen transition (NaN when eta == 0)
    prompt_embeds: torch.Tensor  # (N, L, D)
    negative_prompt_embeds: torch.Tensor  # (N, L, D) the unconditional ("") embeddings
    images: np.ndarray  # (N, H, W, 3) uint8
    guidance_scale: float
    eta: float

    @property
    def final_latents(self) -> torch.Tensor:
        """(N, C, H, W) the denoised latent x_0 (pixels in [-1, 1] for the pixel pipeline)."""
        return self.latents[:, -1]

    @property
    def num_steps(self) -> int:
        """Number of denoising transitions T."""
        return len(self.timesteps)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Trajectories:
        """A new Trajectories holding only the given samples, in the given order."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        per_sample = {f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name in _PER_SAMPLE_TENSORS}
        return Trajectories(prompts=[self.prompts[i] for i in idx.tolist()], images=self.images[idx.numpy()],
                            timesteps=self.timesteps, guidance_scale=self.guidance_scale, eta=self.eta, **per_sample)

    __getitem__ = subset

    @classmethod
    def concat(cls, parts: Sequence[Trajectories]) -> Trajectories:
        """Concatenate batches sampled with the same timesteps and settings."""
        first = parts[0]
        for p in parts[1:]:
            if not torch.equal(p.timesteps, first.timesteps) or (p.guidance_scale, p.eta) != (
                    first.guidance_scale, first.eta):
                raise ValueError("can only concatenate trajectories sampled with the same timesteps, guidance and eta")
        per_sample = {name: torch.cat([getattr(p, name) for p in parts]) for name in _PER_SAMPLE_TENSORS}
        return cls(prompts=[s for p in parts for s in p.prompts], images=np.concatenate([p.images for p in parts]),
                   timesteps=first.timesteps, guidance_scale=first.guidance_scale, eta=first.eta, **per_sample)

    def to(self, device: str | torch.device) -> Trajectories:
        """Move every tensor to ``device`` (images stay a numpy array)."""
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return Trajectories(**moved)

    def save(self, path: str | Path) -> None:
        """Write to a .pt file (tensors moved to CPU, images stored as a uint8 tensor)."""
        cpu = self.to("cpu")
        state = {f.name: getattr(cpu, f.name) for f in fields(cpu)}
        state["images"] = torch.from_numpy(np.ascontiguousarray(self.images))
        torch.save(state, path)

    @classmethod
    def load(cls, path: str | Path) -> Trajectories:
        """Read a file written by ``save``."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["images"] = state["images"].numpy()
        return cls(**state)


_PER_SAMPLE_TENSORS = ("start_noise", "latents", "log_probs", "prompt_embeds", "negative_prompt_embeds")


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> pixels in [-1, 1] (N, 3, H, W) fp32; identity for the pixel pipeline. Differentiable."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        pixels = latents
    else:
        z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):  # SD3-style VAEs; None/0 for SD 1.x/2.x
            z = z + vae.config.shift_factor
        pixels = vae.decode(z).sample
    return pixels.float().clamp(-1, 1)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Pixels in [-1, 1] (N, 3, H, W) -> uint8 numpy (N, H, W, 3)."""
    scaled = ((pixels.detach().float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def step_alphas(scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ᾱ_t and ᾱ_prev (T,) fp32; prev is the next timestep in the list, final_alpha_cumprod after the last."""
    abar = scheduler.alphas_cumprod.float().cpu()
    t = timesteps.long().cpu()
    # The next sampled timestep (not t - 1000 // T) so the posterior targets exactly the latent the next UNet
    # call sees; for evenly spaced schedules this is what DDIMScheduler.step uses too.
    abar_prev = torch.cat([abar[t[1:]], torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32)[None]])
    return abar[t], abar_prev


def _check_stochastic(scheduler, timesteps: torch.Tensor, eta: float) -> None:
    """Refuse η > 0 schedules with a deterministic step (σ = 0): its log-prob would be NaN."""
    abar_t, abar_prev = step_alphas(scheduler, timesteps)
    if eta > 0 and not bool(((1 - abar_prev) * (1 - abar_t / abar_prev) > 0).all()):
        raise ValueError("a DDIM step has sigma = 0 (set_alpha_to_one=True makes the last step deterministic): "
                         "use DDIMScheduler(..., set_alpha_to_one=False) for trajectories with log-probs")


def guided_output(unet, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                  guidance_scale: float) -> torch.Tensor:
    """Guided UNet output (fp32) for per-sample timesteps ``t`` (B,)."""
    if guidance_scale > 1.0:
        # One batched call, [uncond; cond], as the diffusers pipelines do.
        out = _unet_call(unet, torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond]))
        out_uncond, out_cond = out.chunk(2)
        out = out_uncond + guidance_scale * (out_cond - out_uncond)
    else:
        out = _unet_call(unet, x, t, cond)
    if out.shape[1] == 2 * x.shape[1]:  # learned-variance UNets: keep the mean prediction
        out = out[:, : x.shape[1]]
    return out


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


def step_posterior(unet, scheduler, x: torch.Tensor, timesteps: torch.Tensor, step_index: int, cond: torch.Tensor,
                   uncond: torch.Tensor, guidance_scale: float, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM posterior (μ, σ) of x_{t-1} for latents x (B, ...) at ``timesteps[step_index]``, with grad.

    The sampler's own arithmetic for one step; ``unet`` is the UNet or any callable with its signature and a
    ``dtype`` (e.g. the UNet under other weights). For samplers written outside this module (SEIKO's
    differentiable rollout).
    """
    abar_t, abar_prev = step_alphas(scheduler, timesteps)
    n = len(x)
    out = guided_output(unet, x, timesteps[step_index].to(x.device).expand(n), cond, uncond, guidance_scale)
    return ddim_posterior(scheduler, out, x, abar_t[step_index].expand(n), abar_prev[step_index].expand(n), eta)


def _sample_chunk(pipe, x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, timesteps: torch.Tensor,
                  guidance_scale: float, eta: float, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the DDIM loop on one batch; returns latents (B, T+1, ...) and log-probs (B, T)."""
    abar_t, abar_prev = step_alphas(pipe.scheduler, timesteps)
    latents, log_probs = [x], []
    for i, t in enumerate(timesteps):
        t_batch = t.expand(len(x))
        out = guided_output(pipe.unet, x, t_batch, cond, uncond, guidance_scale)
        mu, sigma = ddim_posterior(pipe.scheduler, out, x, abar_t[i].expand(len(x)), abar_prev[i].expand(len(x)), eta)
        if eta > 0:
            x = mu + sigma * noise[:, i]
            log_probs.append(gaussian_log_prob(x, mu, sigma))
        else:  # deterministic DDIM: the transition has no density
            x = mu
            log_probs.append(torch.full((len(x),), float("nan"), device=x.device))
        latents.append(x)
    return torch.stack(latents, dim=1), torch.stack(log_probs, dim=1)


@torch.no_grad()
def rollout(pipe, prompts: Sequence[str], *, guidance_scale: float, num_steps: int = 20, eta: float = 1.0,
            generator: torch.Generator | None = None, seed: int | None = None, start_noise: torch.Tensor | None = None,
            batch_size: int = 8, height: int | None = None, width: int | None = None,
            shard: tuple[int, int] | None = None) -> Trajectories:
    """Sample one image per prompt with DDIM (η = ``eta``) and CFG, recording the whole trajectory.

    ``shard=(rank, world_size)``: sample only that process's contiguous share of the prompts
    (``hero.distributed.shard_range``; it must not be empty). The start and step noise are drawn for *all* prompts
    first and then sliced, so the shards of all ranks, concatenated in rank order, are the unsharded rollout.
    """
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        generator = torch.Generator("cpu").manual_seed(seed)
    prompts, device = list(prompts), pipe._execution_device
    scale = pipe.vae_scale_factor
    h = (height or pipe.unet.config.sample_size * scale) // scale
    w = (width or pipe.unet.config.sample_size * scale) // scale
    shape = (len(prompts), pipe.unet.config.in_channels, h, w)
    if start_noise is None:
        start_noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    elif tuple(start_noise.shape) != shape:
        raise ValueError(f"start_noise has shape {tuple(start_noise.shape)}, expected {shape}")
    start_noise = start_noise.to(device=device, dtype=torch.float32)
    pipe.scheduler.set_timesteps(num_steps, device=device)
    timesteps = pipe.scheduler.timesteps.clone()
    _check_stochastic(pipe.scheduler, timesteps, eta)
    # All step noise up front, per sample, so that images do not depend on batch_size.
    noise = None if eta <= 0 else randn_tensor((shape[0], len(timesteps), *shape[1:]), generator=generator,
                                               device=device, dtype=torch.float32)
    if shard is not None:
        from hero.distributed import shard_range

        own = shard_range(len(prompts), *shard)
        if not own:
            raise ValueError(f"shard {shard} of {len(prompts)} prompts is empty")
        prompts, start_noise = prompts[own.start: own.stop], start_noise[own.start: own.stop]
        noise = None if noise is None else noise[own.start: own.stop]

    parts = []
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo: lo + batch_size]
        # Always encode the unconditional prompt too: stored for re-evaluation and hindsight relabelling.
        cond, uncond = pipe.encode_prompt(chunk, device, 1, True)
        x = start_noise[lo: lo + batch_size] * pipe.scheduler.init_noise_sigma
        step_noise = None if noise is None else noise[lo: lo + batch_size]
        latents, log_probs = _sample_chunk(pipe, x, cond, uncond, timesteps, guidance_scale, eta, step_noise)
        images = to_uint8(decode_latents(pipe, latents[:, -1]))
        parts.append(Trajectories(prompts=chunk, start_noise=start_noise[lo: lo + batch_size], latents=latents,
                                  timesteps=timesteps, log_probs=log_probs, prompt_embeds=cond,
                                  negative_prompt_embeds=uncond, images=images,
                                  guidance_scale=float(guidance_scale), eta=float(eta)))
    return Trajectories.concat(parts)


def step_log_prob(pipe_or_unet, scheduler, traj: Trajectories, indices: Sequence[int] | torch.Tensor,
                  step_index: int | torch.Tensor, guidance_scale: float | None = None,
                  eta: float | None = None) -> torch.Tensor:
    """Log-prob (B,) of the stored transitions latents[i, s] -> latents[i, s+1] under the current weights (with grad).

    ``step_index`` is one step for all samples or a (B,) tensor of per-sample steps; guidance and eta default
    to the rollout's. Same arithmetic as the rollout, so unchanged weights reproduce ``traj.log_probs`` exactly.
    """
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    guidance_scale = traj.guidance_scale if guidance_scale is None else guidance_scale
    eta = traj.eta if eta is None else eta
    if eta <= 0:
        raise ValueError("a deterministic (eta = 0) transition has no log-probability")
    device = unet.device
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
    steps = torch.as_tensor(step_index, dtype=torch.long).cpu().expand(len(idx))
    abar_t, abar_prev = step_alphas(scheduler, traj.timesteps)
    x = traj.latents[idx, steps].to(device)
    x_prev = traj.latents[idx, steps + 1].to(device)
    t = traj.timesteps.cpu()[steps].to(device)
    cond, uncond = traj.prompt_embeds[idx].to(device), traj.negative_prompt_embeds[idx].to(device)
    out = guided_output(unet, x, t, cond, uncond, guidance_scale)
    mu, sigma = ddim_posterior(scheduler, out, x, abar_t[steps], abar_prev[steps], eta)
    return gaussian_log_prob(x_prev, mu, sigma)
