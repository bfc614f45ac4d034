"""A StableDiffusionPipeline whose "latents" are the pixels: no VAE, scale factor 1.

The tiny built-in model denoises 32×32 RGB images directly. Everything else (prompt encoding,
classifier-free guidance, schedulers, LoRA loading, save/load) is the stock StableDiffusionPipeline;
only the two places that touch the VAE differ: the scale factor and the decode step, where the
latent (in [-1, 1]) *is* the image.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput


class PixelStableDiffusionPipeline(StableDiffusionPipeline):
    """StableDiffusionPipeline in pixel space (``vae=None``); call it exactly like the parent."""

    _optional_components = ["vae", "safety_checker", "feature_extractor", "image_encoder"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = False):
        super().__init__(vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                         safety_checker=None, feature_extractor=None, image_encoder=None,
                         requires_safety_checker=False)
        self.vae_scale_factor = 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)

    @torch.no_grad()
    def __call__(self, *args, output_type: str = "pil", return_dict: bool = True, **kwargs):
        out = super().__call__(*args, output_type="latent", return_dict=True, **kwargs)
        pixels = out.images.clamp(-1, 1)
        if output_type == "latent":
            images = pixels
        else:
            images = self.image_processor.postprocess(pixels.float(), output_type=output_type,
                                                      do_denormalize=[True] * len(pixels))
        if not return_dict:
            return (images, None)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)
