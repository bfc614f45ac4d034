"""SEIKO: the closed-form reward models and their optimism, the KL to the previous round, a fine-tuning step, a run."""

import math

import pytest
import torch
from run_checks import assert_lora_loads, assert_resume_reproduces_lora

from hero.algorithms.seiko import (
    SeikoTrainer,
    UnetWithWeights,
    differentiable_rollout,
    lora_snapshot,
    step_kl,
)
from hero.algorithms.seiko_reward import VARIANTS, design, fit_reward, posterior_samples, ridge_fit, ucb_bonus
from hero.config import ConfigError, load_config
from hero.feedback.base import RoundFeedback
from hero.lora import lora_parameters
from hero.rollout import rollout
from hero.train import train

FAST = ["sampler.steps=4", "pg.timesteps_per_traj=2", "seiko.backprop_steps=2", "seiko.batch_size=4",
        "seiko.updates_per_round=2"]


def _cfg(*extra, **values):
    return load_config(None, [*FAST, *extra], **{"algo": "seiko", "prompt": "a red circle", "budget": 8,
                                                  "images_per_round": 4, **values})


def _data(n=40, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(n, d, generator=g) * 3 + 1
    y = phi[:, 0] - 0.5 * phi[:, 1] + 0.1 * torch.randn(n, generator=g)
    return phi, y


# --- the reward models, in closed form ---------------------------------------------------------------------

def test_ridge_fit_is_the_closed_form():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w, a = ridge_fit(z, torch.tensor([1.0, 2.0, 3.0]), lam=1.0)
    # A = ZᵀZ + I = [[3, 1], [1, 3]], Zᵀy = [4, 5], A⁻¹ = [[3, −1], [−1, 3]]/8 → ŵ = [7, 11]/8.
    assert torch.allclose(a, torch.tensor([[3.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
    assert torch.allclose(w, torch.tensor([0.875, 1.375], dtype=torch.float64))


def test_ucb_bonus_by_hand_and_it_shrinks_as_data_is_added():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    _, a = ridge_fit(z, torch.zeros(3), lam=1.0)
    x = torch.tensor([[1.0, 0.0], [1.0, -1.0]])
    # zᵀA⁻¹z: [1, 0] → 3/8; [1, −1] → (3 + 2 + 3)/8 = 1.
    assert torch.allclose(ucb_bonus(x, torch.linalg.inv(a), 2.0), torch.tensor([2 * math.sqrt(3 / 8), 2.0]))
    _, a_more = ridge_fit(torch.cat([z, torch.tensor([[1.0, -1.0]])]), torch.zeros(4), lam=1.0)
    assert (ucb_bonus(x, torch.linalg.inv(a_more), 2.0) < ucb_bonus(x, torch.linalg.inv(a), 2.0)).all()
    # Through the reward model: each round of data lowers the bonus everywhere (the standardisation is the
    # first round's, fixed), while the estimate is the plain ridge fit.
    phi, y = _data(60)
    test_phi = torch.randn(10, 5, generator=torch.Generator().manual_seed(9)) * 3
    g = torch.Generator().manual_seed(0)
    bonuses = []
    for n in (20, 40, 60):
        model = fit_reward("ucb", phi[:n], y[:n], torch.arange(n) // 20, 1.0, 0.5, 4, g)
        bonuses.append(model.bonus(test_phi))
        assert torch.allclose(model(test_phi), model.mean_reward(test_phi) + bonuses[-1])
    assert (bonuses[1] < bonuses[0]).all() and (bonuses[2] < bonuses[1]).all()


def test_greedy_is_the_ridge_fit_and_nonadaptive_uses_round_0_only():
    phi, y = _data(40)
    rounds = torch.arange(40) // 20
    g = torch.Generator().manual_seed(0)
    greedy = fit_reward("greedy", phi, y, rounds, 2.0, 0.5, 4, g)
    mean, std = phi[:20].mean(0), phi[:20].std(0, unbiased=False)  # standardised by the first round
    w, _ = ridge_fit(design(phi, mean, std), y, 2.0)
    assert torch.allclose(greedy.weights[0], w.float(), atol=1e-5)
    assert torch.equal(greedy.bonus(phi), torch.zeros(40))
    assert torch.corrcoef(torch.stack([greedy(phi), y]))[0, 1] > 0.99  # a linear truth is learned
    nonadaptive = fit_reward("nonadaptive", phi, y, rounds, 2.0, 0.5, 4, g)
    only_first = fit_reward("greedy", phi[:20], y[:20], rounds[:20], 2.0, 0.5, 4, g)
    assert torch.equal(nonadaptive.weights, only_first.weights)
    with pytest.raises(ValueError, match="unknown SEIKO variant"):
        fit_reward("softmax", phi, y, rounds, 2.0, 0.5, 4, g)


def test_bootstrap_ensemble_is_reproducible_and_optimistic():
    phi, y = _data(30)
    rounds = torch.zeros(30, dtype=torch.long)
    boot = fit_reward("bootstrap", phi, y, rounds, 1.0, 2.0, 5, torch.Generator().manual_seed(3))
    again = fit_reward("bootstrap", phi, y, rounds, 1.0, 2.0, 5, torch.Generator().manual_seed(3))
    assert boot.weights.shape == (5, 6) and torch.equal(boot.weights, again.weights)
    assert len({tuple(w.tolist()) for w in boot.weights}) == 5  # every member saw its own resample
    preds = boot.predictions(phi)
    assert torch.allclose(boot(phi), preds.mean(1) + 2.0 * preds.std(1)) and (boot.bonus(phi) > 0).all()


def test_thompson_draws_from_the_ridge_posterior():
    phi, y = _data(30)
    z = design(phi, phi.mean(0), phi.std(0, unbiased=False))
    w_hat, a = ridge_fit(z, y, 1.0)
    draws = posterior_samples(w_hat, a, 0.5, 20_000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, posterior_samples(w_hat, a, 0.5, 20_000, torch.Generator().manual_seed(0)))
    assert torch.allclose(draws.mean(0), w_hat, atol=0.01)
    assert torch.allclose(torch.cov(draws.T), 0.25 * torch.linalg.inv(a), atol=3e-4)  # σ²A⁻¹
    rounds = torch.zeros(30, dtype=torch.long)
    ts = fit_reward("thompson", phi, y, rounds, 1.0, 0.5, 4, torch.Generator().manual_seed(1))
    assert ts.weights.shape == (1, 6) and not torch.allclose(ts.weights[0], w_hat.float())
    assert torch.equal(ts.bonus(phi), torch.zeros(30))
    greedy = fit_reward("greedy", phi, y, rounds, 1.0, 0.5, 4, torch.Generator())
    no_noise = fit_reward("thompson", phi, y, rounds, 1.0, 0.0, 4, torch.Generator())
    assert torch.allclose(no_noise.weights, greedy.weights)  # σ = 0: the draw is the posterior mean


# --- fine-tuning through the sampler -----------------------------------------------------------------------

def test_kl_is_zero_against_the_same_weights_and_positive_after_a_change(tiny_pixel_pipeline):
    cfg = _cfg()
    trainer = SeikoTrainer(cfg, tiny_pixel_pipeline)
    unet = tiny_pixel_pipeline.unet
    with torch.no_grad():  # a non-identity adapter, so that the snapshot matters
        for p in lora_parameters(unet):
            p.add_(0.05 * torch.randn_like(p))
    prev = UnetWithWeights(unet, lora_snapshot(unet))
    spec = trainer.sampler_spec()
    noise = trainer.draw_noise(spec, torch.Generator().manual_seed(0))
    x0, kl = differentiable_rollout(tiny_pixel_pipeline, prev, spec, *noise)
    assert torch.equal(kl, torch.zeros(4)) and x0.requires_grad
    with torch.no_grad():
        for p in lora_parameters(unet):
            p.add_(0.05 * torch.randn_like(p))
    x1, kl = differentiable_rollout(tiny_pixel_pipeline, prev, spec, *noise)
    assert (kl > 0).all() and kl.requires_grad
    kl.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(unet))
    mu = torch.zeros(2, 3)  # by hand: Δμ = 1 everywhere, σ = 2 → 1/(2·4)
    assert torch.allclose(step_kl(mu + 1, mu, torch.full((2, 1), 2.0)), torch.full((2,), 1 / 8))


def test_a_finetuning_step_raises_the_learned_reward_of_its_samples(tiny_pixel_pipeline):
    cfg = _cfg("seiko.variant=greedy", "seiko.updates_per_round=1", "lora.lr=1e-4", "seiko.backprop_steps=4")
    trainer = SeikoTrainer(cfg, tiny_pixel_pipeline)
    traj = rollout(tiny_pixel_pipeline, ["a red circle"] * 12, guidance_scale=2.0, num_steps=4, seed=0)
    phi = trainer.features.batched(traj.final_latents)
    trainer.data.add(0, phi, phi[:, 0] - phi[:, 1])  # a reward the features determine
    trainer.fit(torch.Generator().manual_seed(0))
    spec = trainer.sampler_spec()

    def reward():
        with torch.no_grad():
            return trainer.objective(spec, None, torch.Generator().manual_seed(7))[1].mean()

    before = reward()
    stats = trainer.finetune(torch.Generator().manual_seed(7))  # the same noise as `reward` draws
    assert stats["updates"] == 1 and stats["grad_norm"] > 0 and stats["kl_mean"] == 0.0
    assert stats["reward_first"] == pytest.approx(float(before), abs=1e-5)
    assert reward() > before


def test_learn_stores_features_once_and_refits_on_all_feedback(tiny_pixel_pipeline):
    cfg = _cfg("seiko.updates_per_round=0")
    trainer = SeikoTrainer(cfg, tiny_pixel_pipeline)
    assert trainer.start_noise(0, 4, torch.Generator()) is None
    g = torch.Generator().manual_seed(0)
    for r in range(2):
        traj = rollout(tiny_pixel_pipeline, ["a red circle"] * 4, guidance_scale=2.0, num_steps=4, seed=r)
        fb = RoundFeedback(good=[True, False, False, True], best=0, source="sim", scores=[0.9, 0.1, 0.2, 0.7])
        stats = trainer.learn(r, traj, fb, g)
        assert stats["data_size"] == 4 * (r + 1) and {"seconds_representation", "seconds_update"} <= set(stats)
        assert torch.equal(trainer.data.phi[-4:], trainer.features.batched(traj.final_latents))
    assert torch.equal(trainer.data.y, torch.tensor([0.9, 0.1, 0.2, 0.7] * 2))
    assert torch.equal(trainer.data.rounds, torch.tensor([0] * 4 + [1] * 4))
    trainer.learn(1, traj, RoundFeedback(good=[True] * 4, best=None, source="web"), g)  # round 1 learned again
    assert torch.equal(trainer.data.y[4:], torch.ones(4)) and len(trainer.data.y) == 8  # good = 1, replaced


def test_every_variant_fits_and_a_deterministic_sampler_goes_without_the_kl(tiny_pixel_pipeline_factory):
    for variant in VARIANTS:
        trainer = SeikoTrainer(_cfg(f"seiko.variant={variant}"), tiny_pixel_pipeline_factory())
        phi, y = _data(12, d=trainer.features.dim)
        trainer.data.phi, trainer.data.y, trainer.data.rounds = phi, y, torch.arange(12) // 6
        assert trainer.fit(torch.Generator().manual_seed(0))["data_size"] == 12
    with pytest.raises(ValueError, match="sampler.eta > 0"):
        SeikoTrainer(_cfg("sampler.eta=0"), tiny_pixel_pipeline_factory())
    trainer.cfg = _cfg("sampler.eta=0", "seiko.kl_weight=0")  # deterministic DDIM backprop, no KL: fine
    trainer.settings = trainer.cfg.seiko
    stats = trainer.finetune(torch.Generator().manual_seed(0))
    assert stats["updates"] == 2 and stats["kl_mean"] == 0.0 and math.isfinite(stats["reward_last"])
    with pytest.raises(ConfigError, match="seiko.variant"):
        _cfg("seiko.variant=softmax")


def test_short_run_writes_a_loadable_lora_and_resumes(tmp_path, never_ask):
    cfg = load_config(None, FAST, algo="seiko", prompt="two red squares", budget=16, images_per_round=8,
                      out=str(tmp_path / "run"))
    run = train(cfg, show_progress=False)
    metrics = run.metrics()
    assert [m["round"] for m in metrics] == [0, 1] and [m["data_size"] for m in metrics] == [8, 16]
    assert {"seconds_representation", "seconds_update", "seiko_reward_first", "bonus_mean"} <= set(metrics[0])
    assert all(m["seiko_updates"] == 2 and m["seiko_kl_mean"] >= 0 and m["seiko_grad_norm"] > 0 for m in metrics)
    assert_lora_loads(run)
    assert_resume_reproduces_lora(run, cfg, never_ask)
