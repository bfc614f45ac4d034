"""FLUX.1 (``FluxPipeline``, ``FluxTransformer2DModel``) on the model layer: the same rectified flow and SDE
sampler as SD 3 (``hero.models.sd3``, ``hero.models.flow``), with FLUX's own conditioning.

- The engine keeps latents unpacked, (N, C, H, W), so starting noise, HERO's guided noise and every stored latent
  look as for the other families; ``prediction`` packs them into FLUX's 2×2 patch tokens, adds the position ids
  and unpacks the velocity it returns.
- Conditioning: the T5 tokens with the pooled CLIP embedding packed into extra rows (``pack_pooled``).
- Guidance: FLUX.1-dev is guidance-distilled: ``sampler.guidance_scale`` is the value of its guidance embedding
  (3.5 on its model card), one forward pass per step and no unconditional branch. A model without a guidance
  embedding (FLUX.1-schnell) ignores it.
- Timesteps: the pipeline's schedule, σ from 1 to 1/T, shifted by μ, which grows with the image's token count
  (``FluxPipeline``'s ``calculate_shift`` with the scheduler's settings).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from hero.models.denoiser import pack_pooled, unpack_pooled
from hero.models.sd3 import SD3Denoiser
from hero.precision import unet_call

__all__ = ["FLUX_TARGET_PRESETS", "FluxDenoiser", "pack_latents", "unpack_latents"]

_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
FLUX_TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": _ATTENTION,
    "wide": _ATTENTION + ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
                          "proj_out", "norm1.linear", "norm1_context.linear", "norm.linear", "x_embedder",
                          "context_embedder", "timestep_embedder.linear_1", "timestep_embedder.linear_2",
                          "guidance_embedder.linear_1", "guidance_embedder.linear_2", "text_embedder.linear_1",
                          "text_embedder.linear_2"),
}


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/2 · W/2, 4C): FLUX's 2×2 patch tokens."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of ``pack_latents`` for latents of height h and width w."""
    n, _, d = tokens.shape
    return tokens.view(n, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, d // 4, h, w)


def image_ids(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(h/2 · w/2, 3) position ids of the patch tokens (row, column), as ``FluxPipeline`` builds them."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device)


class _FluxCall:
    """The FLUX transformer called as the engine calls a UNet, network(x, t, encoder_hidden_states=c), on unpacked
    latents: packs x, unpacks the pooled embedding from c, adds the ids and the guidance value."""

    def __init__(self, transformer, pooled_dim: int, guidance: float | None):
        self.transformer, self.pooled_dim, self.guidance = transformer, pooled_dim, guidance

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor):
        tokens, pooled = unpack_pooled(encoder_hidden_states, self.pooled_dim)
        n, _, h, w = x.shape
        guidance = None if self.guidance is None else torch.full((n,), self.guidance, device=x.device)
        out = self.transformer(hidden_states=pack_latents(x), timestep=t / 1000, guidance=guidance,
                               pooled_projections=pooled, encoder_hidden_states=tokens,
                               txt_ids=torch.zeros(tokens.shape[1], 3, device=x.device),
                               img_ids=image_ids(h, w, x.device)).sample
        return _Output(unpack_latents(out, h, w))


class _Output:
    """The unpacked velocity, where the engine reads a network's output (``.sample``)."""

    def __init__(self, sample: torch.Tensor):
        self.sample = sample


class FluxDenoiser(SD3Denoiser):
    """FLUX.1: a rectified-flow transformer over packed latents, guidance-distilled (dev) or not (schnell)."""

    target_presets = FLUX_TARGET_PRESETS
    # The guidance embedding the likelihood methods train at (FLUX.1-dev's card value, as diffusers' FLUX LoRA
    # training scripts default to).
    train_guidance: float = 3.5

    def conditioned(self, network, guidance_scale: float | None = None) -> _FluxCall:
        distilled = bool(self.pipe.transformer.config.guidance_embeds)
        return _FluxCall(network, int(self.pipe.transformer.config.pooled_projection_dim),
                         guidance_scale if distilled else None)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            cond, pooled, _ = self.pipe.encode_prompt(list(prompts), device=self.device, num_images_per_prompt=1)
            uncond, pooled_uncond, _ = self.pipe.encode_prompt([""] * len(prompts), device=self.device,
                                                               num_images_per_prompt=1)
        return pack_pooled(cond, pooled), pack_pooled(uncond, pooled_uncond)

    def image_size(self) -> int:
        return int(self.pipe.default_sample_size) * self.pipe.vae_scale_factor

    def latent_shape(self, n: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        scale = 2 * self.pipe.vae_scale_factor  # the VAE's compression, then 2×2 packing
        h, w = (height or self.image_size()) // scale * 2, (width or self.image_size()) // scale * 2
        return (n, int(self.pipe.transformer.config.in_channels) // 4, h, w)

    def timesteps(self, num_steps: int, eta: float, shape: Sequence[int] | None = None) -> torch.Tensor:
        if eta < 0:
            raise ValueError(f"sampler.eta={eta}: the flow SDE's noise level must be ≥ 0 (0: the ODE)")
        shape = self.latent_shape(1) if shape is None else shape
        config = self.pipe.scheduler.config
        mu = calculate_shift((shape[-2] // 2) * (shape[-1] // 2), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        self.pipe.scheduler.set_timesteps(num_steps, device=self.device, sigmas=sigmas, mu=mu)
        return self.pipe.scheduler.timesteps.clone()

    def prediction_parts(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                         guidance_scale: float, network=None,
                         uncond_output: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        # Guidance-distilled: the guidance value conditions one pass; the unconditional embedding is not used, and
        # there is no unconditional half to store or reuse.
        network = self.conditioned(self.network if network is None else network, guidance_scale)
        return unet_call(network, x, t, cond, self.precision), None

    def output(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # The likelihood losses train the prediction at the guidance value the model card samples with.
        return unet_call(self.conditioned(self.network, self.train_guidance), x, t, cond, self.precision)

    train_guidance: float = 3.5  # FLUX.1-dev's card value; the likelihood methods' guidance embedding
