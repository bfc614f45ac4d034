import numpy as np
import pytest

from hero.models import PixelStableDiffusionPipeline, load_pipeline
from hero.sampling import sample_images


@pytest.fixture(scope="module")
def shipped():
    return load_pipeline("tiny-shapes")


def test_shipped_model_loads_as_a_stable_diffusion_pipeline(shipped):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert isinstance(shipped, StableDiffusionPipeline) and isinstance(shipped, PixelStableDiffusionPipeline)
    assert isinstance(shipped.scheduler, DDIMScheduler)
    assert shipped.scheduler.config.prediction_type == "v_prediction"
    assert shipped.vae is None and shipped.vae_scale_factor == 1


def test_shipped_model_samples_reproducibly(shipped):
    a = sample_images(shipped, "three blue circles", 3, seed=1, steps=4)
    b = sample_images(shipped, "three blue circles", 3, seed=1, steps=4)
    c = sample_images(shipped, "three blue circles", 3, seed=2, steps=4)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_save_pretrained_round_trip_gives_the_same_images(shipped, tmp_path):
    shipped.save_pretrained(tmp_path / "copy")
    again = load_pipeline(tmp_path / "copy")
    assert np.array_equal(sample_images(shipped, "two red squares", 2, seed=3, steps=3),
                          sample_images(again, "two red squares", 2, seed=3, steps=3))


def test_pipeline_call_matches_the_parent_api(shipped):
    out = shipped("one red circle", num_inference_steps=2, output_type="pil", height=32, width=32)
    assert out.images[0].size == (32, 32)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a built-in model"):
        load_pipeline(tmp_path / "nothing-here")
