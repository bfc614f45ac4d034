"""load_pipeline on local folders: SD-architecture pipelines built from configs (no downloads)."""

import numpy as np
from diffusers import DDIMScheduler, StableDiffusionPipeline

from hero.models import PixelStableDiffusionPipeline, load_pipeline
from hero.sampling import sample_images


def test_tiny_random_sd_pipeline_loads_and_samples_through_the_loader(tmp_path, tiny_sd_pipeline):
    tiny_sd_pipeline.save_pretrained(tmp_path / "sd")
    pipe = load_pipeline(tmp_path / "sd")
    assert type(pipe) is StableDiffusionPipeline and pipe.vae is not None
    assert isinstance(pipe.scheduler, DDIMScheduler)  # the engine's sampler, whatever the folder shipped
    a = sample_images(pipe, "a red circle", 2, seed=0, steps=3, guidance_scale=5.0)
    b = sample_images(pipe, "a red circle", 2, seed=0, steps=3, guidance_scale=5.0)
    assert a.shape == (2, 16, 16, 3) and np.array_equal(a, b)


def test_pixel_pipeline_folder_round_trips(tmp_path, tiny_pixel_pipeline):
    tiny_pixel_pipeline.save_pretrained(tmp_path / "px")
    pipe = load_pipeline(tmp_path / "px")
    assert isinstance(pipe, PixelStableDiffusionPipeline)
    assert np.array_equal(sample_images(tiny_pixel_pipeline, "a red circle", 2, seed=1, steps=3),
                          sample_images(pipe, "a red circle", 2, seed=1, steps=3))
