"""Frozen features: deterministic, blind to the LoRA, differentiable in the input, nothing trainable left behind."""

import pytest
import torch

from hero.lora import add_lora, lora_parameters
from hero.models.features import FrozenFeatures

PIPES = ["tiny_pixel_pipeline", "tiny_sd_pipeline"]  # pixel space (no VAE) and latent space


def _latents(pipe, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = pipe.unet.config.sample_size
    return torch.randn(n, pipe.unet.config.in_channels, size, size, generator=g)


@pytest.mark.parametrize("name", PIPES)
def test_features_are_deterministic_pooled_mid_block_activations(name, request):
    pipe = request.getfixturevalue(name)
    phi = FrozenFeatures(pipe)
    x = _latents(pipe)
    out = phi(x)
    assert out.shape == (3, pipe.unet.config.block_out_channels[-1]) == (3, phi.dim)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert torch.equal(out, phi(x)) and torch.equal(out, FrozenFeatures(pipe)(x))
    assert not torch.equal(out[0], out[1])  # different images, different features
    both = FrozenFeatures(pipe, pool="mean+max")(x)
    assert both.shape == (3, 2 * phi.dim) and torch.equal(both[:, : phi.dim], out)
    assert torch.allclose(phi.batched(x, batch_size=2), out, atol=1e-5)  # batching: float rounding only


@pytest.mark.parametrize("name", PIPES)
def test_features_ignore_the_lora_and_leave_it_as_it_was(name, request):
    pipe = request.getfixturevalue(name)
    x = _latents(pipe)
    before = FrozenFeatures(pipe)(x)
    add_lora(pipe.unet)
    phi = FrozenFeatures(pipe)
    with torch.no_grad():
        for p in lora_parameters(pipe):
            p.add_(0.5 * torch.randn_like(p))
        cond = phi.uncond.expand(len(x), -1, -1)
        t = torch.full((len(x),), 50)
        out_lora = pipe.unet(x, t, encoder_hidden_states=cond).sample
    assert torch.equal(phi(x), before)  # the adapter is off for the features
    with torch.no_grad():  # ... and back on afterwards, still trainable
        assert torch.equal(pipe.unet(x, t, encoder_hidden_states=cond).sample, out_lora)
    assert all(p.requires_grad for p in lora_parameters(pipe))
    for p in lora_parameters(pipe):  # a frozen adapter stays frozen (peft's enable_adapters would unfreeze it)
        p.requires_grad_(False)
    phi(x)
    assert not any(p.requires_grad for p in pipe.unet.parameters())


@pytest.mark.parametrize("name", PIPES)
def test_features_are_differentiable_in_the_input_only(name, request):
    pipe = request.getfixturevalue(name)
    add_lora(pipe.unet)
    x = _latents(pipe).requires_grad_(True)
    out = FrozenFeatures(pipe)(x)
    assert out.requires_grad
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in pipe.unet.parameters())  # nothing of the UNet trains through φ
