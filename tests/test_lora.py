"""LoRA on the UNet attention projections: placement, identity at init, save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hero.lora import DEFAULT_TARGETS, add_lora, load_lora, lora_parameters, save_lora
from hero.rollout import rollout

PROMPTS = ["a red circle", "a blue square"]


def _images(pipe) -> np.ndarray:
    return rollout(pipe, PROMPTS, num_steps=3, guidance_scale=3.0, seed=7).images


def test_add_lora_targets_attention_and_starts_as_identity(tiny_pixel_pipeline):
    pipe = tiny_pixel_pipeline
    base = rollout(pipe, PROMPTS, num_steps=3, guidance_scale=3.0, seed=7)
    params = add_lora(pipe.unet, rank=2, alpha=2)
    names = [n for n, p in pipe.unet.named_parameters() if "lora_" in n]
    assert params and len(params) == len(names)
    assert all(any(f".{t}.lora_" in n for t in DEFAULT_TARGETS) for n in names)
    trainable = {n for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert trainable == set(names)  # the base UNet is frozen
    after = rollout(pipe, PROMPTS, num_steps=3, guidance_scale=3.0, seed=7)
    assert torch.equal(after.latents, base.latents)  # lora_B = 0: the adapter is the identity at init


@pytest.mark.parametrize("factory", ["tiny_pixel_pipeline_factory", "tiny_sd_pipeline_factory"])
def test_save_and_load_reproduce_the_images(factory, tmp_path, request):
    build = request.getfixturevalue(factory)
    pipe = build()
    base_images = _images(pipe)
    add_lora(pipe.unet, rank=4, alpha=8)  # alpha != rank: the scale must survive the round trip
    with torch.no_grad():  # stand-in for training
        for p in lora_parameters(pipe):
            p.add_(0.3 * torch.randn_like(p))
    tuned_images = _images(pipe)
    assert not np.array_equal(tuned_images, base_images)
    path = save_lora(pipe, tmp_path / "lora")
    assert (path / "pytorch_lora_weights.safetensors").is_file()

    fresh = build()
    load_lora(fresh, path)
    assert np.array_equal(_images(fresh), tuned_images)
    assert not any(p.requires_grad for p in lora_parameters(fresh))

    resumed = build()
    load_lora(resumed, path, trainable=True)
    trainable = {n for n, p in resumed.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
