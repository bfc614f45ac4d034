"""The trajectory sampler: exact re-evaluation, decoding, the per-step log-prob, and the Trajectories container."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from hero.lora import add_lora, lora_parameters
from hero.models.ddim import gaussian_log_prob
from hero.models.families import denoiser_for
from hero.rollout import Trajectories, rollout, step_log_prob, to_uint8

PROMPTS = ["a red circle", "a blue square", "a green triangle on the left", "big"]
PIPELINES = ["tiny_pixel_pipeline", "tiny_sd_pipeline"]


def _rollout(pipe, **kw) -> Trajectories:
    kw = {"num_steps": 4, "guidance_scale": 3.0, "seed": 0, "batch_size": 4} | kw
    return rollout(pipe, PROMPTS, **kw)


@pytest.mark.parametrize("name", PIPELINES)
def test_shapes_and_reproducibility(name, request):
    pipe = request.getfixturevalue(name)
    traj = _rollout(pipe)
    n, c, s = len(PROMPTS), pipe.unet.config.in_channels, pipe.unet.config.sample_size
    assert traj.latents.shape == (n, 5, c, s, s) and traj.log_probs.shape == (n, 4)
    assert traj.images.shape == (n, s * pipe.vae_scale_factor, s * pipe.vae_scale_factor, 3)
    assert traj.images.dtype == np.uint8 and traj.timesteps.shape == (4,)
    assert torch.equal(traj.latents[:, 0], traj.start_noise) and torch.isfinite(traj.log_probs).all()
    # Same seed, same batching: bit-identical.
    assert torch.equal(_rollout(pipe).latents, traj.latents)
    # Same seed, different batching: the same images (noise is drawn in sample order), up to float rounding:
    # CPU kernels may sum in another order for another batch size (an AMD EPYC does for 3 vs 4).
    again = _rollout(pipe, batch_size=3)
    torch.testing.assert_close(again.latents, traj.latents, rtol=1e-5, atol=1e-5)
    # A given start noise is used as z_T.
    z = torch.randn_like(traj.start_noise)
    assert torch.equal(_rollout(pipe, start_noise=z).latents[:, 0], z)


def test_compiled_sampling_runs_the_network_through_dynamo_with_the_same_images(tiny_pixel_pipeline):
    graphs = []

    def recording_backend(graph, example_inputs):  # a torch.compile backend that runs the traced graph as it is
        graphs.append(graph)
        return graph.forward

    eager = _rollout(tiny_pixel_pipeline)
    compiled = _rollout(tiny_pixel_pipeline, compile=True, compile_backend=recording_backend)
    assert graphs, "the network was not traced"
    torch.testing.assert_close(compiled.latents, eager.latents, rtol=1e-5, atol=1e-5)
    assert np.abs(compiled.images.astype(int) - eager.images.astype(int)).max() <= 1
    assert torch.equal(_rollout(tiny_pixel_pipeline).latents, eager.latents)  # the eager network is untouched


@pytest.mark.parametrize("with_lora", [False, True])
@pytest.mark.parametrize("name", PIPELINES)
def test_reevaluation_gives_ratio_exactly_one(name, with_lora, request):
    pipe = request.getfixturevalue(name)
    if with_lora:  # the training situation: a non-trivial adapter that requires grad
        add_lora(pipe.unet)
        with torch.no_grad():
            for p in lora_parameters(pipe):
                p.add_(0.1 * torch.randn_like(p))
    traj = _rollout(pipe, batch_size=2)
    for i in range(traj.num_steps):
        logp = step_log_prob(denoiser_for(pipe), traj, range(len(traj)), i)
        assert torch.equal(logp.detach(), traj.log_probs[:, i]), f"step {i}"
        assert logp.requires_grad  # differentiable w.r.t. the trainable weights
    # Per-sample steps in a different batch composition, as the policy-gradient update uses them.
    idx, steps = torch.tensor([3, 0, 2]), torch.tensor([1, 3, 0])
    logp = step_log_prob(denoiser_for(pipe), traj, idx, steps)
    assert torch.equal(torch.exp(logp.detach() - traj.log_probs[idx, steps]), torch.ones(3))


@pytest.mark.parametrize("name", PIPELINES)
def test_images_are_the_decoded_final_latents(name, request):
    pipe = request.getfixturevalue(name)
    traj = _rollout(pipe)
    with torch.no_grad():
        assert np.array_equal(to_uint8(denoiser_for(pipe).decode(traj.final_latents)), traj.images)


def _hand_step(pipe, traj: Trajectories, i: int, noise_from_traj: bool = True):
    """One transition recomputed with independent formulas: (log-prob, diffusers' DDIM prev_sample)."""
    sched, g = pipe.scheduler, traj.guidance_scale
    x, x_prev, t = traj.latents[:, i], traj.latents[:, i + 1], traj.timesteps[i]
    with torch.no_grad():
        out = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat(
            [traj.negative_prompt_embeds, traj.prompt_embeds])).sample
    u, c = out.chunk(2)
    out = u + g * (c - u)
    a_t = sched.alphas_cumprod[t].double()
    a_prev = sched.alphas_cumprod[traj.timesteps[i + 1]].double() if i + 1 < traj.num_steps \
        else sched.final_alpha_cumprod.double()
    if sched.config.prediction_type == "epsilon":
        eps = out.double()
        x0 = (x.double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    else:  # v-prediction: x0 = √ā·x − √(1−ā)·v, ε = √ā·v + √(1−ā)·x
        x0 = a_t.sqrt() * x.double() - (1 - a_t).sqrt() * out.double()
        eps = a_t.sqrt() * out.double() + (1 - a_t).sqrt() * x.double()
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    sigma = traj.eta * var.sqrt()
    mu = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
    logp = torch.distributions.Normal(mu, sigma).log_prob(x_prev.double()).flatten(1).mean(1)
    # diffusers' own DDIM step, fed the same model output and the noise the rollout must have drawn.
    noise = ((x_prev.double() - mu) / sigma).float()
    sched.set_timesteps(traj.num_steps)
    ref = sched.step(out, t, x, eta=traj.eta, variance_noise=noise).prev_sample
    return logp, ref


@pytest.mark.parametrize("name", PIPELINES)
def test_log_prob_matches_hand_computation(name, request):
    pipe = request.getfixturevalue(name)
    traj = _rollout(pipe)
    for i in (1, traj.num_steps - 1):  # a middle step and the final one (ᾱ_prev = final_alpha_cumprod)
        logp, ref = _hand_step(pipe, traj, i)
        torch.testing.assert_close(traj.log_probs[:, i].double(), logp, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(traj.latents[:, i + 1], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", PIPELINES)
def test_eta_zero_matches_the_diffusers_pipeline(name, request):
    pipe = request.getfixturevalue(name)
    traj = _rollout(pipe, eta=0.0)
    assert torch.isnan(traj.log_probs).all()
    ref = pipe(PROMPTS, num_inference_steps=4, guidance_scale=3.0, eta=0.0, latents=traj.start_noise,
               output_type="latent").images
    ours = traj.final_latents.clamp(-1, 1) if pipe.vae is None else traj.final_latents  # pixel pipe clamps
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="deterministic"):
        step_log_prob(denoiser_for(pipe), traj, [0], 0)


def test_refuses_a_deterministic_final_step(tiny_sd_pipeline):
    pipe = tiny_sd_pipeline
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)
    with pytest.raises(ValueError, match="set_alpha_to_one"):
        _rollout(pipe)


def test_subset_concat_save_load(tiny_pixel_pipeline, tmp_path):
    traj = _rollout(tiny_pixel_pipeline)
    part = traj[[2, 0]]
    assert part.prompts == [PROMPTS[2], PROMPTS[0]] and np.array_equal(part.images, traj.images[[2, 0]])
    assert torch.equal(part.latents, traj.latents[[2, 0]]) and torch.equal(part.log_probs, traj.log_probs[[2, 0]])
    whole = Trajectories.concat([traj.subset([0, 1]), traj.subset(torch.tensor([2, 3]))])
    for name in ("start_noise", "latents", "log_probs", "prompt_embeds", "negative_prompt_embeds"):
        assert torch.equal(getattr(whole, name), getattr(traj, name)), name
    traj.save(tmp_path / "traj.pt")
    back = Trajectories.load(tmp_path / "traj.pt")
    assert back.prompts == traj.prompts and (back.guidance_scale, back.eta) == (traj.guidance_scale, traj.eta)
    assert np.array_equal(back.images, traj.images) and torch.equal(back.latents, traj.latents)
    assert torch.equal(back.timesteps, traj.timesteps)
    other = _rollout(tiny_pixel_pipeline, eta=0.5)
    with pytest.raises(ValueError, match="same timesteps"):
        Trajectories.concat([traj, other])


@pytest.mark.parametrize("name", PIPELINES)
def test_kept_unconditional_half_reproduces_the_guided_step_with_half_the_batch(name, request):
    pipe = request.getfixturevalue(name)
    add_lora(pipe.unet)
    with torch.no_grad():
        for p in lora_parameters(pipe):
            p.add_(0.1 * torch.randn_like(p))
    traj = _rollout(pipe, batch_size=2, keep_uncond=True)
    assert traj.uncond_outputs.shape == (len(PROMPTS), traj.num_steps, *traj.latents.shape[2:])
    assert _rollout(pipe, batch_size=2).uncond_outputs is None  # kept only when asked
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    idx, steps = torch.tensor([3, 0, 2]), torch.tensor([1, 3, 0])
    logp = step_log_prob(denoiser_for(pipe), traj, idx, steps, sampled_uncond=True)
    hook.remove()
    assert batches == [3]  # the conditional half alone, not [uncond; cond]
    # The same step up to float rounding: the conditional half runs in a batch of its own.
    torch.testing.assert_close(logp.detach(), traj.log_probs[idx, steps], rtol=1e-6, atol=1e-6)
    # The gradient is the one through the conditional half alone, the stored half a constant.
    model, params = denoiser_for(pipe), lora_parameters(pipe)
    grads = torch.autograd.grad(logp.sum(), params)
    x, t = traj.latents[idx, steps], traj.timesteps[steps]
    out_cond = pipe.unet(x, t, encoder_hidden_states=traj.prompt_embeds[idx]).sample[:, : x.shape[1]]
    u = traj.uncond_outputs[idx, steps]
    mu, sigma = model.posterior(u + traj.guidance_scale * (out_cond - u), x, traj.timesteps, steps, traj.eta)
    by_hand = torch.autograd.grad(gaussian_log_prob(traj.latents[idx, steps + 1], mu, sigma).sum(), params)
    for g, h in zip(grads, by_hand, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-7)
    full = torch.autograd.grad(step_log_prob(model, traj, idx, steps).sum(), params)
    assert any(not torch.allclose(g, f, rtol=1e-3, atol=1e-7) for g, f in zip(grads, full, strict=True))
    # The kept outputs follow the samples through subset, concat, save and load.
    part = traj.subset([2, 1])
    assert torch.equal(part.uncond_outputs, traj.uncond_outputs[[2, 1]])
    assert torch.equal(Trajectories.concat([part, traj.subset([0])]).uncond_outputs, traj.uncond_outputs[[2, 1, 0]])
    with pytest.raises(ValueError, match="uncond_outputs"):
        Trajectories.concat([part, _rollout(pipe, batch_size=2)])


def test_kept_unconditional_half_survives_save_and_load(tiny_pixel_pipeline, tmp_path):
    traj = _rollout(tiny_pixel_pipeline, keep_uncond=True)
    traj.save(tmp_path / "t.pt")
    assert torch.equal(Trajectories.load(tmp_path / "t.pt").uncond_outputs, traj.uncond_outputs)
