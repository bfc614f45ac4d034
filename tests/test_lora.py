"""LoRA on the UNet: placement (attention, wide), identity at init, save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hero.lora import DEFAULT_TARGETS, add_lora, load_lora, lora_parameters, resolve_targets, save_lora
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


def test_the_wide_preset_reaches_resnets_time_embedding_and_feed_forwards(tiny_pixel_pipeline_factory):
    pipe = tiny_pixel_pipeline_factory()
    n_attention = len(add_lora(tiny_pixel_pipeline_factory().unet, rank=2, alpha=2, targets="attention"))
    params = add_lora(pipe.unet, rank=2, alpha=2, targets="wide")
    names = {n.split(".lora_")[0] for n, _ in pipe.unet.named_parameters() if "lora_" in n}
    for part in ("resnets.0.conv1", "resnets.0.conv2", "resnets.0.time_emb_proj", "time_embedding.linear_1",
                 "proj_in", "proj_out", "ff.net.2", "attn1.to_q"):
        assert any(part in n for n in names), part
    assert len(params) > 2 * n_attention
    assert add_lora(tiny_pixel_pipeline_factory().unet, targets=["to_q"])
    assert resolve_targets("wide")[:4] == DEFAULT_TARGETS
    with pytest.raises(ValueError, match="unknown LoRA target preset 'everything'"):
        resolve_targets("everything")


@pytest.mark.parametrize("targets", ["attention", "wide"])
@pytest.mark.parametrize("factory", ["tiny_pixel_pipeline_factory", "tiny_sd_pipeline_factory"])
def test_save_and_load_reproduce_the_images(factory, targets, tmp_path, request):
    build = request.getfixturevalue(factory)
    pipe = build()
    base_images = _images(pipe)
    add_lora(pipe.unet, rank=4, alpha=8, targets=targets)  # alpha != rank: the scale must survive the round trip
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
