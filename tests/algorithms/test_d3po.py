"""D3PO: the per-step loss by hand, paired noise, pairwise judging, pairs in the log, resume, a short run."""

import json
import math

import numpy as np
import pytest
import torch
from run_checks import assert_lora_loads, assert_one_pass_is_the_same_update, assert_resume_reproduces_lora

from hero.algorithms.d3po import (
    D3POTrainer,
    d3po_loss,
    d3po_update,
    paired_noise,
    pairs_from_marks,
)
from hero.config import ConfigError, PolicyGradientSettings, load_config
from hero.feedback import RewardFeedback, RoundFeedback, SimulatedHuman
from hero.feedback.annotations import comparison_pairs, load_annotations
from hero.lora import add_lora
from hero.models.families import denoiser_for
from hero.policy_gradient import make_optimizer
from hero.rollout import rollout, step_log_prob
from hero.runs.feedback_log import FeedbackLog
from hero.toyworld import parse_task, random_scene, render
from hero.train import train

FAST = ["sampler.steps=4", "pg.timesteps_per_traj=2"]


def _by_hand(ratio_w: float, ratio_l: float, beta: float = 0.1) -> float:
    return math.log1p(math.exp(-beta * (math.log(ratio_w) - math.log(ratio_l))))  # −log σ(β·margin)


def test_loss_by_hand_clamp_inactive_and_active():
    ref_w, ref_l = torch.tensor([-1.0]), torch.tensor([-3.0])

    def loss(rw: float, rl: float) -> tuple[float, torch.Tensor, torch.Tensor]:
        lw = (ref_w + math.log(rw)).requires_grad_()
        ll = (ref_l + math.log(rl)).requires_grad_()
        value = d3po_loss(lw, ll, ref_w, ref_l, beta=0.1, ratio_clip=0.1)
        value.backward()
        return value.item(), lw.grad, ll.grad

    assert loss(1.0, 1.0)[0] == pytest.approx(math.log(2))  # ratios 1: −log σ(0)
    value, gw, gl = loss(1.05, 0.95)  # inside [0.9, 1.1]: the clamp does nothing
    assert value == pytest.approx(_by_hand(1.05, 0.95), rel=1e-6)
    assert gw.item() < 0 < gl.item()  # raising the winner's log-prob (lowering the loser's) lowers the loss
    value, gw, gl = loss(2.0, 0.5)  # both clamped: ρ_w = 1.1, ρ_l = 0.9, and no gradient flows
    assert value == pytest.approx(_by_hand(1.1, 0.9), rel=1e-6)
    assert gw.item() == 0 and gl.item() == 0
    # Gradient at ratio 1 by hand: d/dlogp_w of −log σ(β(logp_w − logp_l)) = −β·σ(0) = −0.05.
    assert loss(1.0, 1.0)[1].item() == pytest.approx(-0.05)


def test_start_noises_come_in_pairs(tiny_pixel_pipeline):
    z = paired_noise(5, (3, 4, 4), torch.Generator().manual_seed(0))
    assert z.shape == (5, 3, 4, 4)
    assert torch.equal(z[0], z[1]) and torch.equal(z[2], z[3])
    assert not torch.equal(z[1], z[2]) and not torch.equal(z[3], z[4])
    assert comparison_pairs(4) == [(0, 1), (2, 3)] and comparison_pairs(5) == [(0, 1), (2, 3)]
    cfg = load_config(None, FAST, algo="d3po", prompt="a red circle", budget=4, images_per_round=4)
    trainer = D3POTrainer(cfg, tiny_pixel_pipeline)
    noise = trainer.start_noise(0, 4, torch.Generator().manual_seed(1))
    traj = rollout(tiny_pixel_pipeline, ["a red circle"] * 4, guidance_scale=3.0, num_steps=3, eta=1.0,
                   start_noise=noise, seed=0)  # accepted as z_T: the shape is the sampler's
    assert torch.equal(traj.latents[0, 0], traj.latents[1, 0])
    assert not torch.equal(traj.latents[0, 1], traj.latents[1, 1])  # η > 0: the step noise differs


def test_judge_pairs():
    rng = np.random.default_rng(0)
    task = parse_task("two red squares")
    good = render(random_scene(rng, [(2, "red", "square")], "white"))
    bad = render(random_scene(rng, [(3, "blue", "circle")], "black"))
    images = np.stack([bad, good, good, good])
    assert SimulatedHuman(task).judge_pairs(0, task.prompt, images, [(0, 1), (2, 3)]) == [(1, 0)]  # a tie: no pair
    flat = np.full((32, 32, 3), 255, dtype=np.uint8)
    noisy = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert RewardFeedback("jpeg").judge_pairs(0, "x", np.stack([noisy, flat, flat, flat]),
                                              [(0, 1), (2, 3)]) == [(1, 0)]


def test_pairs_from_good_best_marks():
    candidates = [(0, 1), (2, 3), (4, 5), (6, 7)]
    good = [False, True, True, True, False, False, True, False]
    assert pairs_from_marks(good, 2, candidates) == [(1, 0), (2, 3), (6, 7)]
    assert pairs_from_marks(good, None, candidates) == [(1, 0), (6, 7)]


def test_odd_rounds_are_refused():
    with pytest.raises(ConfigError, match="images_per_round"):
        load_config(None, algo="d3po", prompt="p", budget=10, images_per_round=5)
    with pytest.raises(ConfigError, match="budget"):
        load_config(None, algo="d3po", prompt="p", budget=9, images_per_round=4)


def test_load_annotations(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"round": 0, "prompt": "p", "winner": 3, "loser": 1, "winner_image": "x"}) + "\n\n"
                    + json.dumps({"round": 2, "winner": 0, "loser": 5}) + "\n")
    assert load_annotations(path) == [(0, 3, 1), (2, 0, 5)]
    path.write_text(json.dumps({"round": 0, "winner": 1, "loser": 1}) + "\n")
    with pytest.raises(ValueError, match="distinct"):
        load_annotations(path)


def test_update_prefers_the_winners(tiny_pixel_pipeline):
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet)
    noise = paired_noise(4, (3, 8, 8), torch.Generator().manual_seed(0))
    traj = rollout(pipe, ["a red circle"] * 4, guidance_scale=3.0, num_steps=3, start_noise=noise, seed=0)
    cfg = PolicyGradientSettings(timesteps_per_traj=3, batch_size=2, grad_accum=1, min_sigma=0.0)
    opt = make_optimizer(pipe.unet, lr=3e-3)
    pairs = [(1, 0), (2, 3)]
    first = d3po_update(pipe, traj, pairs, opt, cfg, 0.1, 0.1, torch.Generator().manual_seed(0))
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["grad_steps"] == 1
    for _ in range(3):
        d3po_update(pipe, traj, pairs, opt, cfg, 0.1, 0.1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        w, lo = torch.tensor([1, 2]), torch.tensor([0, 3])
        margins = [(step_log_prob(denoiser_for(pipe), traj, w, s) - traj.log_probs[w, s]
                    - step_log_prob(denoiser_for(pipe), traj, lo, s) + traj.log_probs[lo, s]).mean()
                   for s in range(3)]
    assert torch.stack(margins).mean() > 0
    assert d3po_update(pipe, traj, [], opt, cfg, 0.1, 0.1, torch.Generator())["grad_steps"] == 0  # all ties


def test_timesteps_in_one_pass_give_the_same_update(tiny_pixel_pipeline):
    """pg.batch_timesteps: winners and losers of every minibatch × K steps in one pass, the same update."""
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet, rank=2, alpha=2)
    noise = paired_noise(6, (3, 8, 8), torch.Generator().manual_seed(0))
    traj = rollout(pipe, ["a red circle"] * 6, guidance_scale=3.0, num_steps=4, start_noise=noise, seed=0)

    def update(fused: bool) -> dict[str, float]:
        cfg = PolicyGradientSettings(timesteps_per_traj=3, batch_size=1, grad_accum=2, min_sigma=0.0,
                                     batch_timesteps=fused)
        return d3po_update(pipe, traj, [(1, 0), (2, 3), (5, 4)], make_optimizer(pipe.unet, lr=3e-3), cfg, 0.1, 0.1,
                           torch.Generator().manual_seed(4))

    assert_one_pass_is_the_same_update(pipe.unet, update)


def test_learn_derives_pairs_from_good_best_marks(tiny_pixel_pipeline):
    cfg = load_config(None, FAST, algo="d3po", prompt="a red circle", budget=4, images_per_round=4)
    trainer = D3POTrainer(cfg, tiny_pixel_pipeline)
    traj = rollout(tiny_pixel_pipeline, ["a red circle"] * 4, guidance_scale=3.0, num_steps=4, seed=0,
                   start_noise=trainer.start_noise(0, 4, torch.Generator().manual_seed(0)))
    stats = trainer.learn(0, traj, RoundFeedback([True, False, True, True], 2, "web"), torch.Generator())
    assert stats["preference_pairs"] == 2 and np.array_equal(trainer.current_best_image(), traj.images[2])


def test_short_run_pairs_lora_and_resume(tmp_path, never_ask):
    cfg = load_config(None, FAST, algo="d3po", prompt="two red squares", budget=8, images_per_round=4,
                      out=str(tmp_path / "run"))
    run = train(cfg, show_progress=False)
    log = FeedbackLog(run.feedback_db)
    assert log.n_feedback() == 8  # one image judged = one feedback: a pair is 2
    for r in (0, 1):
        fb = log.get_round(r)
        assert fb.good == [] and fb.n_images == 4 and set(fb.pairs) <= {(0, 1), (1, 0), (2, 3), (3, 2)}
    metrics = run.metrics()
    assert [m["pairs"] for m in metrics] == [len(log.get_round(r).pairs) for r in (0, 1)]
    assert metrics[0]["good_rate"] is None and "seconds_update" in metrics[0] and sum(m["pairs"] for m in metrics) > 0
    assert_lora_loads(run)
    # Pairwise rounds come back from the log as pairs.
    assert_resume_reproduces_lora(run, cfg, never_ask)
