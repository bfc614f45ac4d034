"""One entry point for every model: ``load_pipeline("tiny-shapes")`` or a local diffusers folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from hero.models.pixel_pipeline import PixelStableDiffusionPipeline
from hero.models.tiny_shapes import load_text_encoder, sampling_scheduler, shipped_model_dir

BUILTIN = ("tiny-shapes",)


def load_pipeline(model: str | Path = "tiny-shapes", device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """Load the built-in ``tiny-shapes`` model or a local diffusers pipeline folder (SD 1.x/2.x or pixel-space).

    The scheduler is always DDIM (with the checkpoint's own schedule config), the sampler the engine uses.
    """
    if str(model) in BUILTIN:
        pipe = _load_tiny_shapes(shipped_model_dir())
    else:
        path = Path(model)
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(
                f"--model {model!r}: not a built-in model ({', '.join(BUILTIN)}) and not a diffusers pipeline "
                f"folder (no {path / 'model_index.json'}); nothing is downloaded at run time")
        index = json.loads((path / "model_index.json").read_text())
        if index.get("vae") in (None, [None, None]):
            if not (path / "text_encoder").is_dir():  # a shipped-style folder: unet + scheduler only
                pipe = _load_tiny_shapes(path)
            else:
                pipe = PixelStableDiffusionPipeline.from_pretrained(path)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe


def _load_tiny_shapes(folder: Path) -> PixelStableDiffusionPipeline:
    if not (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        raise FileNotFoundError(f"tiny-shapes weights are missing from {folder} (run `hero pretrain-toy`)")
    tokenizer, text_encoder = load_text_encoder()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    scheduler = (DDIMScheduler.from_pretrained(folder / "scheduler") if (folder / "scheduler").is_dir()
                 else sampling_scheduler())
    return PixelStableDiffusionPipeline(vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                        scheduler=scheduler)
