"""SD 3/3.5 (``StableDiffusion3Pipeline``, ``SD3Transformer2DModel``) on the model layer: a rectified-flow
transformer sampled with the SDE of ``hero.models.flow``.

- Conditioning: the pipeline's own ``encode_prompt`` (CLIP-L, CLIP-G and T5 tokens, or zeros for T5 when the
  folder ships without it), with the pooled CLIP embedding packed into extra rows (``pack_pooled``) as SDXL does.
- Sampling: σ from the pipeline's ``FlowMatchEulerDiscreteScheduler`` (its shift included); ``sampler.eta`` is the
  SDE's noise level a (Flow-GRPO uses 0.7; 0 is the scheduler's own Euler ODE, which has no log-prob).
- Likelihood methods: the rectified-flow loss, x_σ = (1 − σ)·x₀ + σ·ε with σ ~ U(0, 1), target v = ε − x₀, weight 1
  (Esser et al., 2024, with uniform σ; min-SNR weighting is a DDPM device and is not applied here).
- Learned rewards: features read at the middle transformer block's image tokens, mean-pooled over tokens.
- LoRA: the joint attention projections (and, "wide", the feed-forwards and the conditioning embedders), saved
  with ``transformer.`` keys, which ``StableDiffusion3Pipeline.load_lora_weights`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hero.models.denoiser import Denoiser, pack_pooled, unpack_pooled, vae_decode
from hero.models.flow import flow_sde_posterior, flow_sigmas, flow_step_stds

__all__ = ["TRANSFORMER_TARGET_PRESETS", "SD3Denoiser"]

_JOINT_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
TRANSFORMER_TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": _JOINT_ATTENTION,
    "wide": _JOINT_ATTENTION + ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
                                "norm1.linear", "norm1_context.linear", "context_embedder",
                                "timestep_embedder.linear_1", "timestep_embedder.linear_2",
                                "text_embedder.linear_1", "text_embedder.linear_2"),
}


class _PooledTransformer:
    """The SD 3 transformer called as the engine calls a UNet, network(x, t, encoder_hidden_states=c): the pooled
    embedding is unpacked from c's last rows."""

    def __init__(self, transformer, pooled_dim: int):
        self.transformer, self.pooled_dim = transformer, pooled_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor):
        hidden, pooled = unpack_pooled(encoder_hidden_states, self.pooled_dim)
        return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=hidden, pooled_projections=pooled)


class SD3Denoiser(Denoiser):
    """SD 3/3.5: an MM-DiT transformer predicting the flow velocity, a 16-channel VAE, the flow SDE sampler."""

    target_presets = TRANSFORMER_TARGET_PRESETS

    @property
    def network(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    def conditioned(self, network) -> _PooledTransformer:
        return _PooledTransformer(network, int(self.pipe.transformer.config.pooled_projection_dim))

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = list(prompts)
        with torch.no_grad():
            cond, uncond, pooled, pooled_uncond = self.pipe.encode_prompt(
                prompts, prompts, prompts, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=True)
        return pack_pooled(cond, pooled), pack_pooled(uncond, pooled_uncond)

    def image_size(self) -> int:
        return int(self.pipe.transformer.config.sample_size) * self.pipe.vae_scale_factor

    def latent_shape(self, n: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        scale = self.pipe.vae_scale_factor
        h, w = (height or self.image_size()) // scale, (width or self.image_size()) // scale
        return (n, int(self.pipe.transformer.config.in_channels), h, w)

    def timesteps(self, num_steps: int, eta: float, shape: Sequence[int] | None = None) -> torch.Tensor:
        if eta < 0:
            raise ValueError(f"sampler.eta={eta}: the flow SDE's noise level must be ≥ 0 (0: the ODE)")
        self.pipe.scheduler.set_timesteps(num_steps, device=self.device)
        return self.pipe.scheduler.timesteps.clone()

    def init_noise_sigma(self) -> float:
        return 1.0  # x at σ = 1 is the noise itself

    def posterior(self, prediction: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor, steps: torch.Tensor,
                  eta: float) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_sde_posterior(prediction, x, timesteps, steps, self.num_train_timesteps, eta)

    def sigmas(self, timesteps: torch.Tensor, eta: float) -> torch.Tensor:
        return flow_step_stds(timesteps, self.num_train_timesteps, eta)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.pipe.vae, latents)

    def noise_estimate(self, prediction: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor,
                       steps: torch.Tensor) -> torch.Tensor:
        sigma = flow_sigmas(timesteps, self.num_train_timesteps)[0][steps.cpu()].to(x.device)
        return x + (1 - sigma.view(-1, *([1] * (x.ndim - 1)))) * prediction  # ε = x + (1 − σ)·v

    def training_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=generator) * self.num_train_timesteps  # σ ~ U(0, 1), as model timesteps

    def _sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (t.float().to(like.device) / self.num_train_timesteps).view(-1, *([1] * (like.ndim - 1)))

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self._sigma(t, x0)
        return (1 - sigma) * x0 + sigma * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def loss_weight(self, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
        return torch.ones(len(t))

    def feature_site(self) -> tuple[torch.nn.Module, int]:
        blocks = self.pipe.transformer.transformer_blocks
        config = self.pipe.transformer.config
        return blocks[len(blocks) // 2], int(config.num_attention_heads * config.attention_head_dim)

    def feature_tensor(self, output) -> torch.Tensor:
        image_tokens = output[1] if isinstance(output, tuple) else output  # (encoder tokens, image tokens)
        return image_tokens.transpose(1, 2)  # (B, D, tokens)

    def feature_input(self, latents: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        return (1 - fraction) * latents, torch.full((len(latents),), fraction * self.num_train_timesteps)
