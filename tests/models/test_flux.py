"""FLUX.1 on the model layer (``hero.models.flux.FluxDenoiser``), on a tiny random guidance-distilled FluxPipeline
(tests/conftest.py; its T5 built from a config, nothing downloaded)."""

import torch

from conftest import build_tiny_flux_pipeline
from hero.models.denoiser import unpack_pooled
from hero.models.families import denoiser_for
from hero.models.flux import FluxDenoiser, image_ids, pack_latents, unpack_latents
from hero.rollout import rollout, step_log_prob


def test_packing_is_the_pipelines_and_inverts():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    assert torch.equal(pack_latents(x), FluxPipeline._pack_latents(x, 2, 4, 6, 8))
    assert torch.equal(unpack_latents(pack_latents(x), 6, 8), x)
    assert torch.equal(image_ids(6, 8, torch.device("cpu")), FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu",
                                                                                                    torch.float32))


def test_the_denoiser_matches_the_pipeline_and_its_log_probs_reevaluate_exactly(tiny_flux_pipeline):
    pipe = tiny_flux_pipeline
    model = denoiser_for(pipe)
    assert isinstance(model, FluxDenoiser) and model.latent_shape(1, 16, 16) == (1, 4, 8, 8)
    cond, _ = model.encode(["a red circle"])
    tokens, pooled, _ = pipe.encode_prompt("a red circle", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(unpack_pooled(cond, 16), (tokens, pooled), strict=True))
    ode = rollout(pipe, ["a red circle"], guidance_scale=3.5, num_steps=4, eta=0.0, seed=1, height=16, width=16)
    theirs = pipe("a red circle", num_inference_steps=4, guidance_scale=3.5, height=16, width=16,
                  latents=pack_latents(ode.start_noise.clone()), output_type="latent").images  # packed
    assert torch.allclose(theirs, pack_latents(ode.final_latents), atol=1e-6)  # the same shifted schedule and guidance
    traj = rollout(pipe, ["a red circle", "a blue square"], guidance_scale=3.5, num_steps=4, eta=0.7, seed=0,
                   height=16, width=16)
    for s in range(traj.num_steps):
        assert torch.equal(step_log_prob(model, traj, [0, 1], s), traj.log_probs[:, s])  # ratio exactly 1
    assert traj.images.shape == (2, 16, 16, 3)


def test_a_schnell_layout_without_guidance_embedding_matches_its_pipeline():
    pipe = build_tiny_flux_pipeline(guidance_embeds=False)  # FLUX.1-schnell: the guidance value is not an input
    model = denoiser_for(pipe)
    ode = rollout(pipe, ["a red circle"], guidance_scale=0.0, num_steps=4, eta=0.0, seed=1, height=16, width=16)
    theirs = pipe("a red circle", num_inference_steps=4, guidance_scale=0.0, height=16, width=16,
                  latents=pack_latents(ode.start_noise.clone()), output_type="latent").images
    assert torch.allclose(theirs, pack_latents(ode.final_latents), atol=1e-6)
    traj = rollout(pipe, ["a red circle"], guidance_scale=0.0, num_steps=4, eta=0.7, seed=0, height=16, width=16)
    for s in range(traj.num_steps):
        assert torch.equal(step_log_prob(model, traj, [0], s), traj.log_probs[:, s])
