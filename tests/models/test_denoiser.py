"""The model layer: what ``Denoiser`` gives the engine equals what the SD pipeline itself computes."""

from __future__ import annotations

import pytest
import torch

from hero.lora import add_lora
from hero.models.ddim import ddim_posterior, step_alphas
from hero.models.denoiser import UNetDenoiser
from hero.models.families import denoiser_for
from hero.rollout import rollout


@pytest.mark.parametrize("fixture", ["tiny_pixel_pipeline", "tiny_sd_pipeline"])
def test_encode_and_shapes_match_the_pipeline(fixture, request):
    pipe = request.getfixturevalue(fixture)
    model = denoiser_for(pipe)
    assert isinstance(model, UNetDenoiser) and model.network is pipe.unet
    cond, uncond = model.encode(["three green triangles", "a red square"])
    want_cond, want_uncond = pipe.encode_prompt(["three green triangles", "a red square"], pipe.device, 1, True)
    assert torch.equal(cond, want_cond) and torch.equal(uncond, want_uncond)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert model.image_size() == size
    assert model.latent_shape(3) == (3, pipe.unet.config.in_channels, pipe.unet.config.sample_size,
                                      pipe.unet.config.sample_size)
    assert model.latent_shape(2, 2 * size, size)[2:] == (2 * pipe.unet.config.sample_size,
                                                          pipe.unet.config.sample_size)


def test_pixel_decode_is_the_latent_clamped(tiny_pixel_pipeline):
    x = torch.linspace(-2, 2, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    assert torch.equal(denoiser_for(tiny_pixel_pipeline).decode(x), x.clamp(-1, 1))


def test_posterior_is_the_ddim_step_at_each_samples_own_step(tiny_pixel_pipeline):
    model = denoiser_for(tiny_pixel_pipeline)
    timesteps = model.timesteps(5, eta=1.0)
    x, out = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    steps = torch.tensor([0, 2, 4])
    mu, sigma = model.posterior(out, x, timesteps, steps, 1.0)
    abar_t, abar_prev = step_alphas(tiny_pixel_pipeline.scheduler, timesteps)
    for i, s in enumerate(steps.tolist()):
        mu_i, sigma_i = ddim_posterior(tiny_pixel_pipeline.scheduler, out[i: i + 1], x[i: i + 1], abar_t[s: s + 1],
                                       abar_prev[s: s + 1], 1.0)
        assert torch.allclose(mu[i], mu_i[0]) and torch.allclose(sigma[i].flatten(), sigma_i.flatten())
    assert torch.allclose(model.sigmas(timesteps, 1.0)[steps], sigma.flatten())


def test_base_model_switches_the_lora_off_and_back_on(tiny_pixel_pipeline):
    model = denoiser_for(tiny_pixel_pipeline)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([500, 500])
    cond, uncond = model.encode(["a", "b"])
    with torch.no_grad(), model.base_model():  # no adapter yet: a no-op
        before = model.prediction(x, t, cond, uncond, 2.0)
    add_lora(model.network, rank=2, alpha=2)
    with torch.no_grad():
        for name, p in model.network.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
        tuned = model.prediction(x, t, cond, uncond, 2.0)
        with model.base_model():
            base = model.prediction(x, t, cond, uncond, 2.0)
        again = model.prediction(x, t, cond, uncond, 2.0)
    assert torch.equal(base, before) and not torch.allclose(tuned, before) and torch.equal(again, tuned)


def test_rollout_accepts_the_denoiser_itself(tiny_pixel_pipeline):
    kw = dict(guidance_scale=2.0, num_steps=3, seed=0)
    a = rollout(tiny_pixel_pipeline, ["x", "y"], **kw)
    b = rollout(denoiser_for(tiny_pixel_pipeline), ["x", "y"], **kw)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)


def test_an_unserved_family_and_an_unknown_lora_preset_say_what_to_do(tiny_pixel_pipeline):
    class FluxLikePipeline:
        pass

    with pytest.raises(ValueError, match="FluxLikePipeline is not a model family"):
        denoiser_for(FluxLikePipeline())
    with pytest.raises(ValueError, match="unknown LoRA target preset 'everything'.*attention, wide"):
        denoiser_for(tiny_pixel_pipeline).lora_targets("everything")
    assert denoiser_for(tiny_pixel_pipeline).lora_targets(["to_q"]) == ("to_q",)
