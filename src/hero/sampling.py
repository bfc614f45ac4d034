"""Plain sampling with the stock diffusers pipeline call: images for `hero sample` and evaluation.

(The engine's own DDIM loop that also records trajectories and log-probs lives in `hero.rollout`.)
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from hero.models.families import denoiser_for
from hero.models.loading import resolve_precision
from hero.precision import Precision, autocast

DEFAULT_STEPS = 20
DEFAULT_ETA = 1.0
DEFAULT_GUIDANCE = 2.0  # measured best for tiny-shapes shapes (docs/tiny-shapes.md)


def precision_context(precision: str, device: torch.device | str = "cpu"):
    """Autocast context for "fp32" (none), "bf16", "fp16" or "auto" (``hero.models.loading.resolve_precision``)."""
    half = Precision.named(resolve_precision(precision, device)).dtype  # the engine's own names and check
    return contextlib.nullcontext() if half is None else autocast(torch.device(device).type, half)


def sample_images(pipe: StableDiffusionPipeline, prompt: str, n: int, seed: int = 0,
                  steps: int = DEFAULT_STEPS, eta: float = DEFAULT_ETA, guidance_scale: float = DEFAULT_GUIDANCE,
                  batch_size: int = 64, precision: str = "fp32") -> np.ndarray:
    """n images for one prompt as (n, H, W, 3) uint8; the same seed gives the same images."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    size = denoiser_for(pipe).image_size()
    # DDIM pipelines take η; a flow-matching pipeline samples its ODE and has no η.
    stochastic = {"eta": eta} if "eta" in inspect.signature(pipe.__call__).parameters else {}
    out = []
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        with precision_context(precision, pipe.device):
            images = pipe(prompt, num_images_per_prompt=k, num_inference_steps=steps, **stochastic,
                          guidance_scale=guidance_scale, generator=generator, output_type="np",
                          height=size, width=size).images
        out.append((np.asarray(images, dtype=np.float32) * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)
