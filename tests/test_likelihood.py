"""The likelihood update's pieces against hand-computed values, and an update that lowers the loss it trains."""

from types import SimpleNamespace

import pytest
import torch

from hero.likelihood import (
    DenoisingErrors,
    ImagePool,
    LikelihoodConfig,
    denoising_errors,
    implied_noise,
    likelihood_update,
    min_snr_weight,
    mirrored,
    noised,
    prediction_target,
    step_lr,
)
from hero.lora import add_lora
from hero.models.denoiser import UNetDenoiser
from hero.models.families import denoiser_for
from hero.policy_gradient import make_optimizer
from hero.rollout import rollout


def _scheduler(kind: str) -> SimpleNamespace:
    """ᾱ = 0.64 at t = 0 and 0.9 at t = 1."""
    return SimpleNamespace(alphas_cumprod=torch.tensor([0.64, 0.9]),
                           config=SimpleNamespace(prediction_type=kind, num_train_timesteps=2))


def test_noising_and_targets_by_hand():
    x0, eps, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([0])
    # x_t = 0.8·1 + 0.6·2
    assert noised(_scheduler("epsilon"), x0, eps, t).item() == pytest.approx(2.0)
    assert prediction_target(_scheduler("epsilon"), x0, eps, t).item() == pytest.approx(2.0)
    # v = 0.8·2 − 0.6·1
    assert prediction_target(_scheduler("v_prediction"), x0, eps, t).item() == pytest.approx(1.0)
    assert prediction_target(_scheduler("sample"), x0, eps, t).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="prediction_type"):
        prediction_target(_scheduler("flow"), x0, eps, t)


def test_min_snr_weights_by_hand():
    t = torch.tensor([0, 1])  # SNR = 0.64/0.36 = 16/9 and 0.9/0.1 = 9
    snr = torch.tensor([16 / 9, 9.0])
    assert torch.allclose(min_snr_weight(_scheduler("epsilon"), t, 5.0), torch.tensor([1.0, 5 / 9]))
    assert torch.allclose(min_snr_weight(_scheduler("v_prediction"), t, 5.0), torch.tensor([snr[0] / (snr[0] + 1),
                                                                                           0.5]))
    assert torch.allclose(min_snr_weight(_scheduler("sample"), t, 5.0), torch.tensor([16 / 9, 5.0]))
    assert torch.equal(min_snr_weight(_scheduler("epsilon"), t, None), torch.ones(2))


class OneParameterUnet(torch.nn.Module):
    """A 'UNet' with one parameter v = 3 whose output everywhere is ``fn(v, the conditioning)``."""

    dtype = torch.float32

    def __init__(self, fn):
        super().__init__()
        self.fn, self.value = fn, torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, x, t, encoder_hidden_states):
        c = encoder_hidden_states.mean(dim=(1, 2)).view(-1, *([1] * (x.ndim - 1)))
        return SimpleNamespace(sample=self.fn(self.value, c) * torch.ones_like(x))


def test_denoising_errors_by_hand():
    """A 'UNet' that outputs a constant: ℓ_θ, ℓ_ref and the distance follow from the target alone."""
    unet = OneParameterUnet(lambda v, c: v)
    model = UNetDenoiser(SimpleNamespace(unet=unet, scheduler=_scheduler("epsilon")))
    x0, eps, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([0])
    e = denoising_errors(model, x0, torch.zeros(1, 1, 1), eps, t, None, with_base=False)
    assert e.model.item() == pytest.approx(1.0) and e.base is None  # (3 − 2)²
    e.model.sum().backward()
    assert unet.value.grad.item() == pytest.approx(2.0)  # d(v − 2)²/dv at v = 3


def test_the_guided_denoising_error_by_hand():
    """A 'UNet' whose output is v·c (c: the conditioning's value): with c = 1 and the empty prompt's c = 0, the guided
    prediction at scale g is 0 + g·(v − 0) = g·v, so ℓ = (g·v − ε)² and dℓ/dv = 2g·(g·v − ε)."""
    unet = OneParameterUnet(lambda v, c: v * c)
    model = UNetDenoiser(SimpleNamespace(unet=unet, scheduler=_scheduler("epsilon")))
    x0, eps, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([0])
    cond, uncond = torch.ones(1, 1, 1), torch.zeros(1, 1, 1)
    plain = denoising_errors(model, x0, cond, eps, t, None, with_base=False, uncond=uncond, guidance_scale=1.0)
    assert plain.model.item() == pytest.approx(1.0)  # scale 1: the conditional prediction, (3 − 2)²
    e = denoising_errors(model, x0, cond, eps, t, None, with_base=False, uncond=uncond, guidance_scale=2.0)
    assert e.model.item() == pytest.approx(16.0)  # (2·3 − 2)²
    e.model.sum().backward()
    assert unet.value.grad.item() == pytest.approx(16.0)  # 2·2·(6 − 2)


def test_the_pool_keeps_one_embedding_per_prompt_and_counts_the_best_as_good(tiny_pixel_pipeline):
    traj = rollout(tiny_pixel_pipeline, ["a red circle"] * 3 + ["a blue square"], guidance_scale=2.0, num_steps=2,
                   seed=0)
    pool = ImagePool()
    pool.add_round(traj, [False, True, False, False], best=3)
    assert pool.labels().tolist() == [False, True, False, True]
    assert set(pool.embeds) == {"a red circle", "a blue square"} and len(pool) == 4
    x0, cond = pool.batch(torch.tensor([3, 1]), 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(x0[0], traj.final_latents[3]) and torch.equal(cond[0], traj.prompt_embeds[3])
    _, dropped = pool.batch(torch.tensor([3]), 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(dropped[0], traj.negative_prompt_embeds[3])  # dropout 1: the empty prompt's embedding
    # RAFT's likelihood.rejected = "unconditional": the not-good images train the empty prompt's branch.
    _, mixed = pool.batch(torch.tensor([0, 1]), 0.0, torch.Generator().manual_seed(0),
                          unconditional=~pool.labels()[torch.tensor([0, 1])])
    assert torch.equal(mixed[0], traj.negative_prompt_embeds[0]) and torch.equal(mixed[1], traj.prompt_embeds[1])
    with pytest.raises(ValueError, match="marks"):
        pool.add_round(traj, [True], best=None)


def test_an_update_lowers_the_denoising_error_on_the_images_it_trains(tiny_pixel_pipeline):
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet, rank=4, alpha=4, targets="wide")
    opt = make_optimizer(pipe.unet, lr=1e-2)
    traj = rollout(pipe, ["a red circle"] * 4, guidance_scale=2.0, num_steps=2, seed=0)
    pool = ImagePool()
    pool.add_round(traj, [True] * 4, best=0)
    g = torch.Generator().manual_seed(1)
    x0, cond = pool.batch(torch.arange(4), 0.0, g)
    noise, t = torch.randn(x0.shape, generator=g), torch.tensor([100, 300, 500, 700])

    def error() -> float:
        with torch.no_grad():
            return float(denoising_errors(denoiser_for(pipe), x0, cond, noise, t, 5.0, False).model.mean())

    before = error()
    stats = likelihood_update(pipe, pool, torch.arange(4), opt, LikelihoodConfig(steps=60, batch_size=4),
                              lambda e, labels: e.model.mean(), torch.Generator().manual_seed(2))
    assert stats["steps"] == 60 and stats["to_base"] > 0
    assert error() < 0.9 * before
    # No candidates (no good image yet): no step, nothing changes.
    assert likelihood_update(pipe, pool, torch.arange(0), opt, LikelihoodConfig(steps=5), lambda e, lab: e.model.mean(),
                             torch.Generator())["steps"] == 0


def test_a_round_with_average_last_ends_on_the_mean_of_its_last_iterates(tiny_pixel_pipeline):
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet, rank=4, alpha=4, targets="wide")
    traj = rollout(pipe, ["a red circle"] * 4, guidance_scale=2.0, num_steps=2, seed=0)
    pool = ImagePool()
    pool.add_round(traj, [True] * 4, best=0)
    start = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if p.requires_grad}

    def weights_after(steps: int, average_last: float) -> dict[str, torch.Tensor]:
        """The adapter after one round from the same start, optimiser state and draws."""
        pipe.unet.load_state_dict(start, strict=False)
        opt = make_optimizer(pipe.unet, lr=1e-2)
        likelihood_update(pipe, pool, torch.arange(4), opt,
                          LikelihoodConfig(steps=steps, batch_size=2, average_last=average_last),
                          lambda e, labels: e.model.mean(), torch.Generator().manual_seed(3))
        return {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if n in start}

    third, fourth = weights_after(3, 0.0), weights_after(4, 0.0)  # a round's first 3 steps draw as a 3-step round's
    averaged = weights_after(4, 0.5)  # the mean of the iterates after steps 3 and 4
    assert any(not torch.equal(third[n], fourth[n]) for n in start)
    for n in start:
        torch.testing.assert_close(averaged[n], (third[n] + fourth[n]) / 2)
    assert all(torch.equal(weights_after(4, 0.25)[n], fourth[n]) for n in start)  # one iterate: the last


def test_denoising_errors_type():
    assert DenoisingErrors(model=torch.zeros(1)).to_base is None


def test_the_cosine_schedule_anneals_each_round_from_the_peak_to_zero():
    cosine = LikelihoodConfig(steps=4, lr=2e-3, lr_schedule="cosine")
    assert [step_lr(cosine, k) for k in range(4)] == pytest.approx([2e-3, 2e-3 * (1 + 0.5 ** 0.5) / 2, 1e-3,
                                                                    2e-3 * (1 - 0.5 ** 0.5) / 2])
    assert step_lr(LikelihoodConfig(steps=4, lr=2e-3), 3) == 2e-3  # constant
    assert step_lr(LikelihoodConfig(steps=4), 0) is None  # no rate given: the optimiser's own is left alone


def test_random_flip_mirrors_about_half_the_images_and_nothing_else():
    x0 = torch.arange(2 * 3 * 2 * 5, dtype=torch.float32).reshape(2, 3, 2, 5).repeat(32, 1, 1, 1)
    out = mirrored(x0, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(o, x.flip(-1))) for o, x in zip(out, x0, strict=True)]
    kept = [bool(torch.equal(o, x)) for o, x in zip(out, x0, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each image is itself or its mirror, left-right
    assert 16 <= sum(flipped) <= 48  # 64 fair coins
    assert torch.equal(mirrored(x0, torch.Generator().manual_seed(0)), out)  # the run's generator decides


def test_an_update_with_random_flip_trains_on_the_pool_images_and_their_mirrors(tiny_pixel_pipeline, monkeypatch):
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet, rank=4, alpha=4, targets="wide")
    traj = rollout(pipe, ["a red circle"] * 2, guidance_scale=2.0, num_steps=2, seed=0)
    pool = ImagePool()
    pool.add_round(traj, [True, True], best=None)
    seen = []

    def recording(model, x0, *args, **kwargs):
        seen.extend(x0.cpu())
        return denoising_errors(model, x0, *args, **kwargs)

    monkeypatch.setattr("hero.likelihood.denoising_errors", recording)
    for flip in (False, True):
        seen.clear()
        likelihood_update(pipe, pool, torch.arange(2), make_optimizer(pipe.unet, lr=1e-3),
                          LikelihoodConfig(steps=4, batch_size=4, random_flip=flip, with_base=False),
                          lambda e, labels: e.model.mean(), torch.Generator().manual_seed(3))
        originals = sum(any(torch.equal(x, p) for p in traj.final_latents) for x in seen)
        mirrors = sum(any(torch.equal(x, p.flip(-1)) for p in traj.final_latents) for x in seen)
        assert originals + mirrors >= len(seen) == 16  # every batch image is a pool image or its mirror
        assert (mirrors > 0) == flip and originals > 0


def test_the_implied_noise_is_the_one_that_noises_the_image_to_the_state(tiny_pixel_pipeline):
    model = denoiser_for(tiny_pixel_pipeline)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([1, 480, 999])
    assert torch.allclose(implied_noise(model, x0, model.noised(x0, eps, t), t), eps, atol=1e-4)


def test_a_pool_with_states_trains_each_image_from_a_state_its_own_sampler_passed(tiny_pixel_pipeline, monkeypatch):
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet, rank=4, alpha=4, targets="wide")
    traj = rollout(pipe, ["a red circle"] * 3, guidance_scale=2.0, num_steps=4, seed=0)
    with pytest.raises(ValueError, match="keep_states"):
        pool = ImagePool()
        pool.add_round(traj, [True, True, True], best=None)
        pool.sampled_state(torch.tensor([0]), torch.Generator())
    pool = ImagePool(keep_states=True)
    pool.add_round(traj, [True, False, True], best=None)
    pool.add_round(traj, [True, True, True], best=None)  # a second round: its images 3-5 are the same three
    model = denoiser_for(pipe)
    seen = []

    def recording(model, x0, cond, noise, t, *args, **kwargs):
        seen.extend(zip(x0.cpu(), model.noised(x0, noise, t).cpu(), t.cpu(), strict=True))
        return denoising_errors(model, x0, cond, noise, t, *args, **kwargs)

    monkeypatch.setattr("hero.likelihood.denoising_errors", recording)
    for flip in (False, True):
        seen.clear()
        likelihood_update(model, pool, torch.tensor([0, 2, 4]), make_optimizer(pipe.unet, lr=1e-3),
                          LikelihoodConfig(steps=3, batch_size=4, sampled_states=1.0, random_flip=flip,
                                           with_base=False), lambda e, labels: e.model.mean(),
                          torch.Generator().manual_seed(3))
        assert len(seen) == 12
        for x0, x_t, t in seen:
            i = next(i for i in range(3) if torch.equal(x0, traj.final_latents[i])
                     or torch.equal(x0, traj.final_latents[i].flip(-1)))
            step = int(torch.nonzero(traj.timesteps == t))  # a sampler timestep, and its own state at it
            state = traj.latents[i, step] if torch.equal(x0, traj.final_latents[i]) else traj.latents[i, step].flip(-1)
            assert torch.allclose(x_t, state, atol=1e-4)
