"""What the engine needs from a model family, in one class: ``Denoiser``.

The rollout, the updates, the learned rewards and the evaluation talk to a ``Denoiser`` instead of reaching into
a diffusers pipeline. It owns what differs between families:

- encoding prompts (``encode``), with the unconditional embedding classifier-free guidance needs;
- the shape of the starting noise (``latent_shape``) and the sampler's timesteps (``timesteps``);
- the guided prediction at x_t (``prediction``) and the stochastic step's mean and σ (``posterior``, ``sigmas``),
  from which ``hero.rollout`` takes every log-prob;
- decoding the final latent to pixels (``decode``);
- where a LoRA goes (``network``, ``lora_targets``), and switching it off for the base model (``base_model``).

``UNetDenoiser`` is the SD 1.x/2.x family (a UNet2DConditionModel, one CLIP text encoder, DDIM with η > 0) and
the pixel-space tiny-shapes, which is the same pipeline without a VAE. ``SDXLDenoiser`` is SDXL: the same DDIM
sampler, two text encoders whose pooled embedding travels inside the conditioning tensor (``pack_pooled``), and
the size conditioning (time ids) read off the latents. A new family (a flow-matching transformer with its SDE
sampler, ``hero.models.sd3``) is a new subclass plus a line in ``hero.models.families.denoiser_for``.

The conditioning a family needs is one tensor per prompt, (N, L, D), whatever it holds: the engine stores it
(``Trajectories.prompt_embeds``, the likelihood methods' pool, HERD's relabels) and hands it back to ``prediction``
without looking inside, so a family with extra conditioning changes no engine code.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

from hero.models.ddim import (
    check_stochastic,
    ddim_posterior,
    guidance_outputs,
    min_snr_weight,
    noise_from_output,
    noised,
    prediction_target,
    step_alphas,
    step_sigmas,
)
from hero.precision import FP32, Precision, unet_output

__all__ = ["UNET_TARGET_PRESETS", "Denoiser", "SDXLDenoiser", "UNetDenoiser", "pack_pooled", "resolve_targets",
           "unpack_pooled", "vae_decode"]

_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
UNET_TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": _ATTENTION,
    # Suffixes of diffusers UNet2DConditionModel module names: resnets (conv1, conv2, their time projection and
    # shortcut), the transformer blocks' projections and feed-forwards, and the timestep embedding's MLP.
    "wide": _ATTENTION + ("conv1", "conv2", "time_emb_proj", "conv_shortcut", "proj_in", "proj_out",
                          "ff.net.0.proj", "ff.net.2", "time_embedding.linear_1", "time_embedding.linear_2"),
}


def resolve_targets(targets: str | Sequence[str],
                    presets: dict[str, tuple[str, ...]] = UNET_TARGET_PRESETS) -> tuple[str, ...]:
    """A preset name (e.g. "attention", "wide") or an explicit list of module-name suffixes -> the suffixes."""
    if isinstance(targets, str):
        if targets not in presets:
            raise ValueError(f"unknown LoRA target preset {targets!r}: use one of {', '.join(presets)} "
                             "or a list of module names")
        return presets[targets]
    if not targets:
        raise ValueError("the LoRA needs at least one target module")
    return tuple(targets)


class Denoiser:
    """The engine's view of one model family; subclasses implement every method for their pipeline.

    Args:
        pipe: the family's diffusers pipeline (weights, tokenizer, scheduler).
        precision: how every call of the network runs (``hero.precision``); the denoiser keeps no other state.
    """

    target_presets: dict[str, tuple[str, ...]] = {}

    def __init__(self, pipe, precision: Precision = FP32):
        self.pipe, self.precision = pipe, precision

    @property
    def network(self) -> torch.nn.Module:
        """The module the LoRA adapts and the optimiser trains."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) prompt embeddings (N, L, D) each; the unconditional is the empty prompt's."""
        raise NotImplementedError

    def latent_shape(self, n: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """Shape of n starting noises for images of ``height`` × ``width`` pixels (None: the model's own size)."""
        raise NotImplementedError

    def image_size(self) -> int:
        """The side in pixels of the images the model was trained at."""
        raise NotImplementedError

    def timesteps(self, num_steps: int, eta: float, shape: Sequence[int] | None = None) -> torch.Tensor:
        """The sampler's timesteps (T,) for ``num_steps`` steps and latents of ``shape`` (None: the model's size);
        refuses a schedule with a σ = 0 step when η > 0."""
        raise NotImplementedError

    def init_noise_sigma(self) -> float:
        """The factor the starting noise is scaled by before the first step."""
        raise NotImplementedError

    def conditioned(self, network):
        """The network as the engine calls it, network(x, t, encoder_hidden_states=c) with ``.sample`` out: a family
        with extra conditioning unpacks it from c here (``pack_pooled``); by default the network itself."""
        return network

    def prediction(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                   guidance_scale: float, network=None, uncond_output: torch.Tensor | None = None) -> torch.Tensor:
        """The guided prediction (fp32) at latents x (B, ...) and per-sample timesteps t (B,), at ``precision``.

        ``network``: the network or any callable with its signature (e.g. under other weights); default ours.
        ``uncond_output``: the unconditional half's output as the sampler stored it (``prediction_parts``): only the
        conditional half is run, and no gradient reaches the unconditional one.
        """
        return self.prediction_parts(x, t, cond, uncond, guidance_scale, network, uncond_output)[0]

    def prediction_parts(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                         guidance_scale: float, network=None,
                         uncond_output: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the guided prediction, its unconditional half's output), or None for the half where guidance runs no
        separate unconditional pass (guidance_scale ≤ 1, a guidance-distilled family)."""
        network = self.conditioned(self.network if network is None else network)
        return guidance_outputs(network, x, t, cond, uncond, guidance_scale, self.precision, uncond_output)

    def output(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The unguided prediction (fp32) at x_t (B, ...), timesteps t (B,): what the likelihood losses train."""
        return unet_output(self.conditioned(self.network), x, t, cond, self.precision)

    def posterior(self, prediction: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor, steps: torch.Tensor,
                  eta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and σ (fp32) of the step from x at ``timesteps[steps]`` (steps: (B,) indices into timesteps)."""
        raise NotImplementedError

    def sigmas(self, timesteps: torch.Tensor, eta: float) -> torch.Tensor:
        """σ (T,) of each step of a rollout with these timesteps and η."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents -> pixels in [-1, 1] (N, 3, H, W) fp32. Differentiable."""
        raise NotImplementedError

    def noise_estimate(self, prediction: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor,
                       steps: torch.Tensor) -> torch.Tensor:
        """ε̂ (fp32) implied by a prediction at x at ``timesteps[steps]``: what DPOK's KL compares."""
        raise NotImplementedError

    # The forward process the model was trained on: the likelihood methods (``hero.likelihood``) noise judged
    # images with it and train the network's own prediction target.

    def training_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n model timesteps drawn for the denoising loss (B,)."""
        raise NotImplementedError

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t of clean latents x0 and noise at model timesteps t (B,)."""
        raise NotImplementedError

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output at x_t (its parameterisation's target)."""
        raise NotImplementedError

    def loss_weight(self, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
        """Per-sample weight (B,) of the denoising loss (``gamma``: min-SNR γ where the family uses it)."""
        raise NotImplementedError

    # Frozen features of an image for a learned reward (``hero.models.features``): the network's middle, read
    # at a small noise level.

    def feature_site(self) -> tuple[torch.nn.Module, int]:
        """The module whose output the features read, and the feature channels it gives."""
        raise NotImplementedError

    def feature_tensor(self, output) -> torch.Tensor:
        """That module's output as (B, C, ...) with channels second (pooled over the rest)."""
        raise NotImplementedError

    def feature_input(self, latents: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, t): clean latents as the network sees them at ``fraction`` of the way to pure noise, no noise
        added, and that model timestep (B,)."""
        raise NotImplementedError

    def lora_targets(self, targets: str | Sequence[str]) -> tuple[str, ...]:
        """A preset name of this family (``target_presets``) or explicit module-name suffixes -> the suffixes."""
        return resolve_targets(targets, self.target_presets)

    @contextlib.contextmanager
    def base_model(self) -> Iterator[None]:
        """Inside: the network without its LoRA adapters (a no-op when it has none)."""
        network = self.network
        if not getattr(network, "peft_config", None):
            yield
            return
        network.disable_adapters()
        try:
            yield
        finally:
            network.enable_adapters()


class UNetDenoiser(Denoiser):
    """SD 1.x/2.x (latent space, a VAE) and the pixel-space tiny-shapes (no VAE): a UNet, CLIP, DDIM with η > 0."""

    target_presets = UNET_TARGET_PRESETS

    @property
    def network(self) -> torch.nn.Module:
        return self.pipe.unet

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            cond, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, True)
        return cond, uncond

    def image_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def latent_shape(self, n: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        scale = self.pipe.vae_scale_factor
        h, w = (height or self.image_size()) // scale, (width or self.image_size()) // scale
        return (n, self.pipe.unet.config.in_channels, h, w)

    def timesteps(self, num_steps: int, eta: float, shape: Sequence[int] | None = None) -> torch.Tensor:
        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(num_steps, device=self.device)
        timesteps = scheduler.timesteps.clone()
        check_stochastic(scheduler, timesteps, eta)
        return timesteps

    def init_noise_sigma(self) -> float:
        return float(self.pipe.scheduler.init_noise_sigma)

    def posterior(self, prediction: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor, steps: torch.Tensor,
                  eta: float) -> tuple[torch.Tensor, torch.Tensor]:
        abar_t, abar_prev = step_alphas(self.pipe.scheduler, timesteps)
        steps = steps.cpu()
        return ddim_posterior(self.pipe.scheduler, prediction, x, abar_t[steps], abar_prev[steps], eta)

    def sigmas(self, timesteps: torch.Tensor, eta: float) -> torch.Tensor:
        return step_sigmas(self.pipe.scheduler, timesteps, eta)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(getattr(self.pipe, "vae", None), latents)

    def noise_estimate(self, prediction: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor,
                       steps: torch.Tensor) -> torch.Tensor:
        abar_t = step_alphas(self.pipe.scheduler, timesteps)[0]
        return noise_from_output(self.pipe.scheduler, prediction, x, abar_t[steps])

    def training_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.pipe.scheduler.config.num_train_timesteps, (n,), generator=generator)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noised(self.pipe.scheduler, x0, noise, t)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return prediction_target(self.pipe.scheduler, x0, noise, t)

    def loss_weight(self, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
        return min_snr_weight(self.pipe.scheduler, t, gamma)

    def feature_site(self) -> tuple[torch.nn.Module, int]:
        unet = self.pipe.unet
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("frozen features need a UNet with a mid block")
        return unet.mid_block, int(unet.config.block_out_channels[-1])

    def feature_tensor(self, output) -> torch.Tensor:
        return output  # (B, C, H, W)

    def feature_input(self, latents: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        scheduler = self.pipe.scheduler
        n_train = int(scheduler.config.num_train_timesteps)
        timestep = min(n_train - 1, max(0, round(fraction * n_train)))
        scale = float(scheduler.alphas_cumprod[timestep].float().sqrt())
        return scale * latents, torch.full((len(latents),), timestep, dtype=torch.long)


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> pixels in [-1, 1] fp32 through the VAE (its scaling and shift factors); None: pixel space."""
    if vae is None:  # the pixel pipeline: the latent is the image
        pixels = latents
    else:
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            # SDXL's VAE overflows in fp16 (its config says so): decode in fp32 from here on, as its pipeline does
            # for each decode, but once (the VAE is frozen; 2x its fp16 size, ~0.3 GB for SDXL's).
            vae.to(torch.float32)
        z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):  # SD3-style VAEs; None/0 for SD 1.x/2.x
            z = z + vae.config.shift_factor
        pixels = vae.decode(z).sample
    return pixels.float().clamp(-1, 1)


def pack_pooled(embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Token embeddings (N, L, D) and a pooled embedding (N, P) -> one conditioning tensor (N, L + k, D), k = ⌈P/D⌉:
    the pooled vector zero-padded into k extra rows, so the engine stores and batches it as SD 1.x's embeddings."""
    n, _, d = embeds.shape
    rows = torch.zeros(n, math.ceil(pooled.shape[1] / d) * d, dtype=embeds.dtype, device=embeds.device)
    rows[:, : pooled.shape[1]] = pooled.to(embeds.dtype)
    return torch.cat([embeds, rows.view(n, -1, d)], dim=1)


def unpack_pooled(conditioning: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``pack_pooled``: (token embeddings (N, L, D), pooled (N, P))."""
    k = math.ceil(pooled_dim / conditioning.shape[-1])
    return conditioning[:, :-k], conditioning[:, -k:].flatten(1)[:, :pooled_dim]


class _SizeConditionedUNet:
    """SDXL's UNet called as SD 1.x's is, network(x, t, encoder_hidden_states=c), with any precision wrapper around
    it: the pooled text embedding is unpacked from c and the time ids (original size, crop (0, 0), target size,
    as ``StableDiffusionXLPipeline`` passes by default) follow from the size of x."""

    def __init__(self, unet, pooled_dim: int, vae_scale: int):
        self.unet, self.pooled_dim, self.vae_scale = unet, pooled_dim, vae_scale

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor):
        hidden, pooled = unpack_pooled(encoder_hidden_states, self.pooled_dim)
        h, w = x.shape[-2] * self.vae_scale, x.shape[-1] * self.vae_scale
        time_ids = torch.tensor([h, w, 0, 0, h, w], device=x.device, dtype=hidden.dtype).expand(len(x), -1)
        return self.unet(x, t, encoder_hidden_states=hidden,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})


class SDXLDenoiser(UNetDenoiser):
    """SDXL (``StableDiffusionXLPipeline``): a UNet with size and pooled-text conditioning, two CLIP text encoders,
    a VAE, DDIM with η > 0 as for SD 1.x, so log-probs, LoRA targets and the LoRA file are the UNet family's.

    ``encode`` returns the two encoders' concatenated token embeddings with the pooled embedding packed into extra
    rows (``pack_pooled``); the empty prompt's follows the pipeline's ``force_zeros_for_empty_prompt``.
    """

    @property
    def pooled_dim(self) -> int:
        """P of the pooled text embedding: the UNet's added-embedding input less the six time ids' embedding."""
        config = self.pipe.unet.config
        return int(config.projection_class_embeddings_input_dim) - 6 * int(config.addition_time_embed_dim)

    def conditioned(self, network) -> _SizeConditionedUNet:
        return _SizeConditionedUNet(network, self.pooled_dim, self.pipe.vae_scale_factor)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            cond, uncond, pooled, pooled_uncond = self.pipe.encode_prompt(
                list(prompts), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True)
        return pack_pooled(cond, pooled), pack_pooled(uncond, pooled_uncond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        if vae.dtype == torch.float16 and vae.config.force_upcast:  # SDXL's VAE overflows in fp16, as diffusers says
            vae.to(torch.float32)
        return super().decode(latents)
