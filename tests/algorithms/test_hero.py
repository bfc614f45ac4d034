import math

import pytest
import torch
import torch.nn.functional as F
from run_checks import assert_lora_loads, assert_resume_reproduces_lora

from hero.algorithms.hero import (
    FeedbackMemory,
    TripletEncoder,
    cosine_distance,
    guided_noise,
    hero_rewards,
    precision_threshold,
    train_encoder,
    triplet_loss,
)


def test_cosine_distance_by_hand():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    v = torch.tensor([[0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(cosine_distance(u, v), torch.tensor([0.5, 1.0, 0.0]), atol=1e-6)


def test_triplet_loss_is_per_sample():
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(6, 8, generator=g) for _ in range(3))
    batch = triplet_loss(a, p, n, margin=0.5)
    one_by_one = torch.stack([triplet_loss(a[i:i + 1], p[i:i + 1], n[i:i + 1], 0.5) for i in range(6)]).mean()
    assert torch.allclose(batch, one_by_one)
    # The reference implementation's cosine over the batch dimension gives a different number.
    buggy = F.relu((1 - F.cosine_similarity(a, p, dim=0)) / 2 - (1 - F.cosine_similarity(a, n, dim=0)) / 2 + 0.5)
    assert not torch.allclose(batch, buggy.mean())


def test_triplet_loss_by_hand():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0]])  # d = 0.5
    n = torch.tensor([[1.0, 0.0]])  # d = 0
    assert triplet_loss(a, p, n, margin=0.5).item() == pytest.approx(1.0)
    assert triplet_loss(a, n, p, margin=0.5).item() == pytest.approx(0.0)


def test_best_pick_maps_back_to_the_right_image():
    latents = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 4, 4).clone()
    noise = -latents
    mem = FeedbackMemory()
    mem.add_round(latents, noise, [False, True, False, True, False], best=3)
    assert torch.equal(mem.best_latent, latents[3]) and torch.equal(mem.best_noise, noise[3])
    assert torch.equal(mem.good_noises, noise[[1, 3]])
    # A later round where the person keeps the current best: nothing of the new round becomes best.
    mem.add_round(latents + 10, noise - 10, [True, False, False, False, False], best=None)
    assert torch.equal(mem.best_latent, latents[3])
    assert torch.equal(mem.good_noises, (noise - 10)[[0]])
    # A later round where a new image (index 4 of that round, not of the good subset) wins.
    mem.add_round(latents + 20, noise - 20, [False, False, True, False, True], best=4)
    assert torch.equal(mem.best_latent, latents[4] + 20)
    with pytest.raises(IndexError):
        mem.add_round(latents, noise, [True] * 5, best=5)


def test_triplet_data_from_this_round_or_all():
    mem = FeedbackMemory()
    x = torch.randn(4, 3, 4, 4)
    mem.add_round(x, x, [True, False, False, False], best=0)
    mem.add_round(x + 1, x, [True, True, False, False], best=None)
    pos, neg = mem.triplet_data(last_round_only=True)
    assert len(pos) == 2 and len(neg) == 2
    pos, neg = mem.triplet_data(last_round_only=False)
    assert len(pos) == 3 and len(neg) == 5


def test_guided_noise_counts_and_statistics():
    g = torch.Generator().manual_seed(0)
    best = torch.randn(3, 8, 8, generator=g)
    good = torch.randn(4, 3, 8, 8, generator=g)
    z = guided_noise(1000, best, good, beta=0.5, eps=0.1, generator=g)
    assert z.shape == (1000, 3, 8, 8)
    corr_best = F.cosine_similarity(z.flatten(1), best.flatten()[None], dim=1)
    assert (corr_best > 0.9).sum().item() >= 500  # the first half starts from the best
    assert corr_best[:500].min() > 0.95 and corr_best[:500].mean() == pytest.approx(math.sqrt(1 - 0.01), abs=0.01)
    from_good = z[500:].flatten(1) @ good.flatten(1).T
    assert (from_good.argmax(1).bincount(minlength=4) > 80).all()  # every good noise is used
    assert z.var().item() == pytest.approx(1.0, abs=0.1)


def test_rewards_peak_at_the_best():
    enc = TripletEncoder(3, embed_dim=16)
    x = torch.randn(5, 3, 32, 32)
    r = hero_rewards(enc, x, x[2])
    assert r[2].item() == pytest.approx(1.0, abs=1e-5)
    assert ((r >= 0) & (r <= 1 + 1e-6)).all()


def test_reward_space_projection_compares_the_projections():
    torch.manual_seed(0)
    enc = TripletEncoder(3, embed_dim=16)
    x = torch.randn(5, 3, 32, 32)
    r = hero_rewards(enc, x, x[2], space="projection")
    with torch.no_grad():
        p = enc.project(x)
    expected = (1 + torch.nn.functional.cosine_similarity(p, p[2:3].expand_as(p), dim=-1)) / 2
    assert torch.allclose(r, expected, atol=1e-6)
    assert not torch.allclose(r, hero_rewards(enc, x, x[2]), atol=1e-3)  # a different space, a different reward


def test_encoder_learns_to_separate_good_from_bad():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    good = torch.randn(16, 3, 16, 16, generator=g) * 0.3 + torch.tensor([1.0, -1, -1]).view(1, 3, 1, 1)
    bad = torch.randn(16, 3, 16, 16, generator=g) * 0.3 + torch.tensor([-1.0, -1, 1]).view(1, 3, 1, 1)
    mem = FeedbackMemory()
    mem.add_round(torch.cat([good, bad]), torch.zeros(32, 3, 16, 16), [True] * 16 + [False] * 16, best=0)
    enc = TripletEncoder(3, embed_dim=16)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    first = train_encoder(enc, opt, mem, epochs=1, margin=0.5, batch_size=8, last_round_only=False, generator=g)
    last = train_encoder(enc, opt, mem, epochs=30, margin=0.5, batch_size=8, last_round_only=False, generator=g)
    assert last["triplet_loss"] < first["triplet_loss"]
    r = hero_rewards(enc, torch.cat([good, bad]), good[0])
    assert r[:16].mean() > r[16:].mean() + 0.2


@pytest.mark.parametrize("encoder_input", ["features", "latent"])
def test_encoder_inputs_and_rewards_for_both_encoder_inputs(tiny_pixel_pipeline, encoder_input):
    from hero.algorithms.hero import FeatureTripletEncoder, HeroTrainer
    from hero.config import load_config

    cfg = load_config(None, [f"hero.encoder_input={encoder_input}", "hero.embed_dim=16"], prompt="two red squares")
    trainer = HeroTrainer(cfg, tiny_pixel_pipeline)
    g = torch.Generator().manual_seed(0)
    first, second = torch.rand(6, 3, 32, 32, generator=g) * 2 - 1, torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
    x1 = trainer.encoder_inputs(first)
    if encoder_input == "latent":  # the paper's CNN sees the final latent itself
        assert torch.equal(x1, first) and not isinstance(trainer.encoder, FeatureTripletEncoder)
    else:  # standardised φ, with the statistics of the first round kept for every later round
        assert x1.shape == (6, trainer.features.dim) and isinstance(trainer.encoder, FeatureTripletEncoder)
        assert torch.allclose(x1.mean(0), torch.zeros(x1.shape[1]), atol=1e-5)
        stats = trainer.feature_stats
        trainer.encoder_inputs(second)
        assert trainer.feature_stats is stats
    r = hero_rewards(trainer.encoder, x1, x1[0])
    assert r.shape == (6,) and torch.isclose(r[0], torch.tensor(1.0)) and ((r >= 0) & (r <= 1 + 1e-6)).all()


def test_precision_threshold_by_hand():
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8, 0.6])  # sorted: 0.9 0.8 0.7 0.6 0.5
    good = torch.tensor([False, True, False, True, True])  # good at 0.9, 0.8, 0.6: top-k precision 1 1 2/3 3/4 3/5
    assert precision_threshold(scores, good, 1.0) == pytest.approx(0.8)
    assert precision_threshold(scores, good, 0.75) == pytest.approx(0.6)
    assert precision_threshold(scores, good, 0.6) == pytest.approx(0.5)
    assert math.isinf(precision_threshold(scores, torch.zeros(5, dtype=torch.bool), 0.1))  # nothing good: none


@pytest.mark.slow
@pytest.mark.parametrize("update", ["likelihood", "policy_gradient"])
def test_hero_with_unjudged_samples_costs_no_feedback_loads_and_resumes(tmp_path, never_ask, update):
    from hero.config import load_config
    from hero.runs.feedback_log import FeedbackLog
    from hero.train import train

    fast = ["sampler.steps=4", "pg.timesteps_per_traj=2", "hero.embed_dim=16", "hero.encoder_epochs=2",
            "likelihood.steps_per_round=2", "likelihood.batch_size=4", f"hero.update={update}", "hero.unjudged=6",
            "hero.noise=plain"]
    cfg = load_config(None, fast, prompt="two red squares", budget=16, images_per_round=8, out=str(tmp_path / "run"))
    run = train(cfg, show_progress=False)
    assert FeedbackLog(run.feedback_db).n_feedback() == 16  # the unjudged samples are not feedback
    first, second = run.metrics()
    if update == "likelihood":  # round 0 has no reward to accept by; round 1 accepts some of its 6 samples
        assert "unjudged_accepted" not in first and 0 <= second["unjudged_accepted"] <= 6
        assert second["pool_size"] == 16 + second["unjudged_accepted"] and second["lik_steps"] == 2
    else:
        assert first["unjudged_samples"] == second["unjudged_samples"] == 6  # all join the policy gradient
        assert second["pg_backward_passes"] > 0
    assert_lora_loads(run)
    assert_resume_reproduces_lora(run, cfg, never_ask)
