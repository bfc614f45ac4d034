"""Which ``Denoiser`` serves a loaded pipeline: ``denoiser_for(pipe)``; the one place that knows every family."""

from __future__ import annotations

from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from hero.models.denoiser import Denoiser, SDXLDenoiser, UNetDenoiser
from hero.models.flux import FluxDenoiser
from hero.models.sd3 import SD3Denoiser
from hero.precision import FP32, Precision

__all__ = ["as_denoiser", "denoiser_for"]

# The pipeline classes and their Denoisers, most specific first (a subclass before its base).
FAMILIES: tuple[tuple[type, type[Denoiser]], ...] = (
    (StableDiffusionXLPipeline, SDXLDenoiser),
    (StableDiffusion3Pipeline, SD3Denoiser),
    (FluxPipeline, FluxDenoiser),
    (StableDiffusionPipeline, UNetDenoiser),  # SD 1.x/2.x and PixelStableDiffusionPipeline (tiny-shapes)
)


def denoiser_for(pipe, precision: Precision = FP32) -> Denoiser:
    """The ``Denoiser`` of a loaded pipeline's family, running its network at ``precision``; a clear error for a
    family the engine does not serve yet."""
    for pipeline_class, denoiser_class in FAMILIES:
        if isinstance(pipe, pipeline_class):
            return denoiser_class(pipe, precision)
    raise ValueError(f"{type(pipe).__name__} is not a model family hero trains yet: use an SD 1.x/2.x pipeline "
                     "(StableDiffusionPipeline), SDXL (StableDiffusionXLPipeline), SD 3/3.5 "
                     "(StableDiffusion3Pipeline), FLUX.1 (FluxPipeline) or the built-in tiny-shapes")


def as_denoiser(model_or_pipe) -> Denoiser:
    """A ``Denoiser`` as it is; a bare pipeline as its family's, in fp32 (the engine's entry points take either)."""
    return model_or_pipe if isinstance(model_or_pipe, Denoiser) else denoiser_for(model_or_pipe)
