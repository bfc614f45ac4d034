"""Models: the pixel-space pipeline, the built-in tiny-shapes model and loading any local checkpoint."""

from hero.models.loading import load_pipeline
from hero.models.pixel_pipeline import PixelStableDiffusionPipeline

__all__ = ["load_pipeline", "PixelStableDiffusionPipeline"]
