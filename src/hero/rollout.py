"""Trajectory-centric sampler: every latent, timestep and per-step log-probability of a rollout.

The sampler is an explicit loop with classifier-free guidance. For each step the model family
(``hero.models.denoiser``; DDIM with η > 0 for SD 1.x/2.x) gives the step's Gaussian N(μ, σ²I) over x_{t-1};
the loop samples x_{t-1} = μ + σ·ξ and records log N(x_{t-1}; μ, σ²) averaged over latent elements (fp32).
``step_log_prob`` re-evaluates a stored transition with the *same* code path, so with unchanged
weights the policy-gradient ratio is exactly 1.

``compile=True`` samples through ``torch.compile(network)`` (PyTorch's inductor: fused kernels, generated C++ on a
CPU). It computes the same function up to float rounding, not to the bit, so its log-probs are not the eager
network's: only the samplings whose log-probs no update re-evaluates use it (``sampler.compile``; the evaluation,
the likelihood methods' rounds, ``hero.algorithms.base.rollout_kwargs``). The compiled code is cached per network
by PyTorch, so a later rollout, or the same network with updated LoRA weights, does not compile again; switching
the adapter off (the base model) or a new batch shape compiles once more (docs/speed.md has the gain and the cost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from hero.distributed import shard_range
from hero.models.ddim import gaussian_log_prob
from hero.models.denoiser import Denoiser
from hero.models.families import as_denoiser

__all__ = ["Trajectories", "rollout", "step_log_prob", "step_posterior", "to_uint8"]


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
    # (N, T, C, H, W) fp32: the unconditional half's output at each step, kept only when sampled with
    # keep_uncond=True (``pg.sampled_uncond``: an update then runs the conditional half alone); else None.
    uncond_outputs: torch.Tensor | None = None

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
        per_sample = {name: getattr(self, name)[idx] for name in self._per_sample_tensors()}
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
            if (p.uncond_outputs is None) != (first.uncond_outputs is None):
                raise ValueError("can only concatenate trajectories that all keep, or all lack, uncond_outputs")
        per_sample = {name: torch.cat([getattr(p, name) for p in parts]) for name in first._per_sample_tensors()}
        return cls(prompts=[s for p in parts for s in p.prompts], images=np.concatenate([p.images for p in parts]),
                   timesteps=first.timesteps, guidance_scale=first.guidance_scale, eta=first.eta, **per_sample)

    def kept_uncond(self, indices: torch.Tensor, steps: torch.Tensor) -> torch.Tensor | None:
        """The stored unconditional-half outputs (B, ...) of samples ``indices`` at their ``steps``; None when the
        rollout kept none."""
        return None if self.uncond_outputs is None else self.uncond_outputs[indices, steps]

    def _per_sample_tensors(self) -> tuple[str, ...]:
        return _PER_SAMPLE_TENSORS + (("uncond_outputs",) if self.uncond_outputs is not None else ())

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


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Pixels in [-1, 1] (N, 3, H, W) -> uint8 numpy (N, H, W, 3)."""
    scaled = ((pixels.detach().float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def step_posterior(model: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, step_index: int, cond: torch.Tensor,
                   uncond: torch.Tensor, guidance_scale: float, eta: float,
                   network=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's (μ, σ) for latents x (B, ...) at ``timesteps[step_index]``, with grad.

    The sampler's own arithmetic for one step; ``network`` is the model's network under other weights (any
    callable with its signature and a ``dtype``), default the model's own. For samplers written outside this
    module (SEIKO's differentiable rollout).
    """
    n = len(x)
    out = model.prediction(x, timesteps[step_index].to(x.device).expand(n), cond, uncond, guidance_scale, network)
    return model.posterior(out, x, timesteps, torch.full((n,), step_index, dtype=torch.long), eta)


def _sample_chunk(model: Denoiser, x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                  timesteps: torch.Tensor, guidance_scale: float, eta: float, noise: torch.Tensor | None,
                  network=None, keep_uncond: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the sampling loop on one batch; returns latents (B, T+1, ...), log-probs (B, T) and, with
    ``keep_uncond``, the unconditional half's outputs (B, T, ...; else, or without a separate unconditional pass,
    None)."""
    latents, log_probs, uncond_outputs = [x], [], []
    for i, t in enumerate(timesteps):
        steps = torch.full((len(x),), i, dtype=torch.long)
        out, out_uncond = model.prediction_parts(x, t.expand(len(x)), cond, uncond, guidance_scale, network)
        if keep_uncond:
            uncond_outputs.append(out_uncond)
        mu, sigma = model.posterior(out, x, timesteps, steps, eta)
        if eta > 0:
            x = mu + sigma * noise[:, i]
            log_probs.append(gaussian_log_prob(x, mu, sigma))
        else:  # deterministic DDIM: the transition has no density
            x = mu
            log_probs.append(torch.full((len(x),), float("nan"), device=x.device))
        latents.append(x)
    kept = None if not uncond_outputs or uncond_outputs[0] is None else torch.stack(uncond_outputs, dim=1)
    return torch.stack(latents, dim=1), torch.stack(log_probs, dim=1), kept


@torch.no_grad()
def rollout(pipe, prompts: Sequence[str], *, guidance_scale: float, num_steps: int = 20, eta: float = 1.0,
            generator: torch.Generator | None = None, seed: int | None = None, start_noise: torch.Tensor | None = None,
            batch_size: int = 8, height: int | None = None, width: int | None = None,
            shard: tuple[int, int] | None = None, compile: bool = False,
            compile_backend: str | Callable = "inductor", keep_uncond: bool = False) -> Trajectories:
    """Sample one image per prompt with the family's stochastic sampler (η = ``eta``) and CFG, recording it all.

    ``pipe``: a loaded pipeline (its family's ``Denoiser`` is made here) or a ``Denoiser``.
    ``shard=(rank, world_size)``: sample only that process's contiguous share of the prompts
    (``hero.distributed.shard_range``; it must not be empty). The start and step noise are drawn for *all* prompts
    first and then sliced, so the shards of all ranks, concatenated in rank order, are the unsharded rollout.
    ``compile``: sample through ``torch.compile(network, backend=compile_backend)`` (see the module docstring: its
    log-probs are not the eager network's to the bit).
    ``keep_uncond``: also store each step's unconditional-half output (``Trajectories.uncond_outputs``, as much
    memory again as the latents), for an update that re-runs the conditional half only (``pg.sampled_uncond``).
    """
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        generator = torch.Generator("cpu").manual_seed(seed)
    model = as_denoiser(pipe)
    prompts, device = list(prompts), model.device
    shape = model.latent_shape(len(prompts), height, width)
    if start_noise is None:
        start_noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    elif tuple(start_noise.shape) != shape:
        raise ValueError(f"start_noise has shape {tuple(start_noise.shape)}, expected {shape}")
    start_noise = start_noise.to(device=device, dtype=torch.float32)
    timesteps = model.timesteps(num_steps, eta, shape)
    # All step noise up front, per sample, so that images do not depend on batch_size.
    noise = None if eta <= 0 else randn_tensor((shape[0], len(timesteps), *shape[1:]), generator=generator,
                                               device=device, dtype=torch.float32)
    if shard is not None:
        own = shard_range(len(prompts), *shard)
        if not own:
            raise ValueError(f"shard {shard} of {len(prompts)} prompts is empty")
        prompts, start_noise = prompts[own.start: own.stop], start_noise[own.start: own.stop]
        noise = None if noise is None else noise[own.start: own.stop]

    network = torch.compile(model.network, backend=compile_backend) if compile else None
    parts = []
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo: lo + batch_size]
        # Always encode the unconditional prompt too: stored for re-evaluation and hindsight relabelling.
        cond, uncond = model.encode(chunk)
        x = start_noise[lo: lo + batch_size] * model.init_noise_sigma()
        step_noise = None if noise is None else noise[lo: lo + batch_size]
        latents, log_probs, uncond_outputs = _sample_chunk(model, x, cond, uncond, timesteps, guidance_scale, eta,
                                                           step_noise, network, keep_uncond)
        images = to_uint8(model.decode(latents[:, -1]))
        parts.append(Trajectories(prompts=chunk, start_noise=start_noise[lo: lo + batch_size], latents=latents,
                                  timesteps=timesteps, log_probs=log_probs, prompt_embeds=cond,
                                  negative_prompt_embeds=uncond, images=images,
                                  guidance_scale=float(guidance_scale), eta=float(eta),
                                  uncond_outputs=uncond_outputs))
    return Trajectories.concat(parts)


def step_log_prob(model: Denoiser, traj: Trajectories, indices: Sequence[int] | torch.Tensor,
                  step_index: int | torch.Tensor, guidance_scale: float | None = None,
                  eta: float | None = None, sampled_uncond: bool = False) -> torch.Tensor:
    """Log-prob (B,) of the stored transitions latents[i, s] -> latents[i, s+1] under the current weights (with grad).

    ``step_index`` is one step for all samples or a (B,) tensor of per-sample steps; guidance and eta default
    to the rollout's. Same arithmetic as the rollout, so unchanged weights reproduce ``traj.log_probs`` exactly.
    ``sampled_uncond``: where the rollout kept them (``rollout(..., keep_uncond=True)``), take the unconditional
    half's outputs from it and run only the conditional half: half the network work, the gradient through the
    conditional half only, and the sampled step again only up to float rounding (the half runs in a batch of its
    own) and only while the weights are the sampled ones (the unconditional half does not follow the update).
    Without kept outputs (none kept, guidance ≤ 1, a guidance-distilled family)
    both halves run as usual.
    """
    if sampled_uncond and guidance_scale is not None and guidance_scale != traj.guidance_scale:
        raise ValueError("sampled_uncond reuses the rollout's own guided step: it needs the rollout's guidance")
    guidance_scale = traj.guidance_scale if guidance_scale is None else guidance_scale
    eta = traj.eta if eta is None else eta
    if eta <= 0:
        raise ValueError("a deterministic (eta = 0) transition has no log-probability")
    device = model.network.device
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
    steps = torch.as_tensor(step_index, dtype=torch.long).cpu().expand(len(idx))
    x = traj.latents[idx, steps].to(device)
    x_prev = traj.latents[idx, steps + 1].to(device)
    t = traj.timesteps.cpu()[steps].to(device)
    cond, uncond = traj.prompt_embeds[idx].to(device), traj.negative_prompt_embeds[idx].to(device)
    kept = traj.kept_uncond(idx, steps) if sampled_uncond else None
    out = model.prediction(x, t, cond, uncond, guidance_scale, uncond_output=kept)
    mu, sigma = model.posterior(out, x, traj.timesteps, steps, eta)
    return gaussian_log_prob(x_prev, mu, sigma)
