"""SD 3 on the model layer: the flow SDE's arithmetic (``hero.models.flow``) and ``SD3Denoiser`` on a tiny random
StableDiffusion3Pipeline (tests/conftest.py; no T5, nothing downloaded)."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from hero.models import load_pipeline
from hero.models.denoiser import unpack_pooled
from hero.models.families import denoiser_for
from hero.models.flow import flow_sde_posterior, flow_step_stds
from hero.models.sd3 import SD3Denoiser
from hero.rollout import rollout, step_log_prob

N_TRAIN = 1000


def _gaussian_velocity(x: torch.Tensor, sigma: float, c: float) -> torch.Tensor:
    """The exact v = E[ε − x₀ | x_σ] for data x₀ ~ N(0, c²) on the path x_σ = (1 − σ)·x₀ + σ·ε."""
    var = (1 - sigma) ** 2 * c**2 + sigma**2
    return (sigma - (1 - sigma) * c**2) / var * x


def _sample(a: float, c: float, n: int = 20000, steps: int = 100, drift_correction: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    timesteps = torch.linspace(1.0, 1.0 / steps, steps) * N_TRAIN
    x = torch.randn(n, 1, generator=g)
    for i in range(steps):
        sigma = float(timesteps[i]) / N_TRAIN
        v = _gaussian_velocity(x, sigma, c)
        mu, std = flow_sde_posterior(v, x, timesteps, torch.full((n,), i), N_TRAIN, a)
        if not drift_correction:  # the ODE's drift with the SDE's noise: wrong marginals
            nxt = float(timesteps[i + 1]) / N_TRAIN if i + 1 < steps else 0.0
            mu = x + v * (nxt - sigma)
        x = mu + std * torch.randn(n, 1, generator=g)
    return x


@pytest.mark.parametrize("a", [0.0, 0.7])
def test_the_sde_keeps_the_odes_marginals_on_gaussian_data(a):
    c = 0.5  # data std; the noise has std 1, so a sampler that ignores the score ends far from 0.5
    assert float(_sample(a, c).std()) == pytest.approx(c, rel=0.05)


def test_without_the_drift_correction_the_noise_inflates_the_marginal():
    assert float(_sample(0.7, 0.5, drift_correction=False).std()) > 1.3 * 0.5


def test_noise_level_zero_is_the_schedulers_euler_step_and_the_first_step_is_finite():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    ts = scheduler.timesteps
    x, v = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    for i, t in enumerate(ts):
        mu, std = flow_sde_posterior(v, x, ts, torch.full((2,), i), N_TRAIN, 0.0)
        scheduler._step_index = i
        assert torch.allclose(mu, scheduler.step(v, t, x).prev_sample, atol=1e-6) and float(std.max()) == 0
    stds = flow_step_stds(ts, N_TRAIN, 0.7)
    assert float(ts[0]) == N_TRAIN and torch.isfinite(stds).all() and (stds > 0).all()
    assert stds[-1] < 0.01 < stds[:-1].min()  # the last step is near-deterministic, as DDIM's: pg.min_sigma drops it


def test_the_denoiser_matches_the_pipeline_and_its_log_probs_reevaluate_exactly(tiny_sd3_pipeline):
    pipe = tiny_sd3_pipeline
    model = denoiser_for(pipe)
    assert isinstance(model, SD3Denoiser) and model.image_size() == 16
    cond, uncond = model.encode(["a red circle"])
    ref, ref_uncond, pooled, pooled_uncond = pipe.encode_prompt("a red circle", None, None, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(unpack_pooled(cond, 2 * 16), (ref, pooled), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(unpack_pooled(uncond, 2 * 16), (ref_uncond, pooled_uncond),
                                                 strict=True))
    ode = rollout(pipe, ["a red circle"], guidance_scale=3.0, num_steps=4, eta=0.0, seed=1)
    theirs = pipe("a red circle", num_inference_steps=4, guidance_scale=3.0, latents=ode.start_noise.clone(),
                  output_type="latent").images
    assert torch.allclose(theirs, ode.final_latents, atol=1e-6)  # a = 0: the pipeline's own sampler
    traj = rollout(pipe, ["a red circle", "a blue square"], guidance_scale=3.0, num_steps=4, eta=0.7, seed=0)
    for s in range(traj.num_steps):
        assert torch.equal(step_log_prob(model, traj, [0, 1], s), traj.log_probs[:, s])  # ratio exactly 1


def test_the_flow_training_process_by_hand(tiny_sd3_pipeline):
    model = denoiser_for(tiny_sd3_pipeline)
    x0, eps, t = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0), torch.tensor([250.0])
    assert model.noised(x0, eps, t).item() == pytest.approx(0.75 * 2 - 0.25)  # (1 − σ)·x₀ + σ·ε at σ = 0.25
    assert model.training_target(x0, eps, t).item() == pytest.approx(-3.0)  # v = ε − x₀
    assert torch.equal(model.loss_weight(t, 5.0), torch.ones(1))
    x = model.noised(x0, eps, t)  # ε̂ = x + (1 − σ)·v recovers the noise from the true velocity
    est = model.noise_estimate(model.training_target(x0, eps, t), x, torch.tensor([250.0]), torch.tensor([0]))
    assert est.item() == pytest.approx(-1.0)
    drawn = model.training_timesteps(1000, torch.Generator().manual_seed(0))
    assert float(drawn.min()) >= 0 and float(drawn.max()) < N_TRAIN and drawn.dtype == torch.float32


def test_an_sd3_folder_without_t5_loads_with_its_flow_scheduler(tmp_path, tiny_sd3_pipeline):
    tiny_sd3_pipeline.save_pretrained(tmp_path / "sd3")
    pipe = load_pipeline(tmp_path / "sd3")
    assert type(pipe) is StableDiffusion3Pipeline and pipe.text_encoder_3 is None
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0
