"""DDPO: rewards from the feedback (graded scores, else good as 1/0), the update, scores in the log, a short run."""

import math

import numpy as np
import pytest
import torch
from run_checks import assert_lora_loads, assert_resume_reproduces_lora

from hero.algorithms.ddpo import DDPOTrainer, ddpo_rewards
from hero.config import load_config
from hero.feedback import RewardFeedback, RoundFeedback, SimulatedHuman
from hero.feedback.simulated import reported_score
from hero.policy_gradient import clipped_surrogate_loss, standardise_advantages
from hero.runs.feedback_log import FeedbackLog, read_jsonl
from hero.toyworld import parse_task, random_scene, render
from hero.toyworld.judge import Verdict
from hero.train import train

FAST = ["sampler.steps=4", "pg.timesteps_per_traj=2"]


def test_rewards_are_scores_when_given_else_good():
    fb = RoundFeedback(good=[True, False, False], best=0, source="sim", scores=[0.9, 0.2, 0.4])
    assert ddpo_rewards(fb).tolist() == pytest.approx([0.9, 0.2, 0.4])
    assert ddpo_rewards(fb, use_scores=False).tolist() == [1.0, 0.0, 0.0]
    assert ddpo_rewards(RoundFeedback([False, True], None, "web")).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="pairs"):
        ddpo_rewards(RoundFeedback([], None, "sim", pairs=[(0, 1)], n_images=2))


def test_ddpo_loss_by_hand():
    # Rewards [1, 0] standardise to advantages [1, -1]; ratios 1.5 and 0.5 with clip 0.2:
    # sample 0: max(-1·1.5, -1·1.2) = -1.2; sample 1: max(1·0.5, 1·0.8) = 0.8; mean -0.2.
    adv = standardise_advantages([1.0, 0.0])
    assert adv.tolist() == pytest.approx([1.0, -1.0])
    logp_old = torch.tensor([-1.0, -2.0])
    logp_new = logp_old + torch.tensor([math.log(1.5), math.log(0.5)])
    assert clipped_surrogate_loss(logp_new, logp_old, adv, 0.2).item() == pytest.approx(-0.2)


def test_sources_report_scores():
    rng = np.random.default_rng(0)
    task = parse_task("two red squares")
    images = np.stack([render(random_scene(rng, [(2, "red", "square")], "white")),
                       render(random_scene(rng, [(2, "blue", "circle")], "black"))])
    fb = SimulatedHuman(task).judge_round(0, task.prompt, images, None)
    assert len(fb.scores) == 2 and fb.scores[0] > fb.scores[1] and all(0 <= s <= 1 for s in fb.scores)
    flat = np.full((32, 32, 3), 255, dtype=np.uint8)
    noisy = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    fb = RewardFeedback("jpeg").judge_round(0, "x", np.stack([noisy, flat]), None)
    assert fb.scores[1] > fb.scores[0]  # compressibility = minus the JPEG size


def test_a_noisy_simulated_human_reports_a_score_consistent_with_its_answer():
    truth = dict(colour=True, shape=True, count=True, background=True, binding=True, well_formed=True,
                 preference=True, safe=True, n_objects=2)
    assert reported_score(Verdict(**truth, good=True, score=0.95)) == pytest.approx(0.95)
    assert reported_score(Verdict(**truth, good=False, score=0.95)) == pytest.approx(0.45)  # flipped to "not good"
    wrong = {**truth, "count": False}
    assert reported_score(Verdict(**wrong, good=True, score=0.4)) == pytest.approx(0.9)  # flipped to "good"


def test_scores_are_logged_and_exported(tmp_path):
    with FeedbackLog(tmp_path / "f.sqlite") as log:
        log.record_round(0, "p", [True, False], 0, "sim", scores=[0.75, 0.25])
        log.record_round(1, "p", [False, True], 1, "web")
        assert log.get_round(0).scores == [0.75, 0.25] and log.get_round(1).scores is None
        with pytest.raises(ValueError, match="scores"):
            log.record_round(2, "p", [True], 0, "sim", scores=[0.1, 0.2])
        assert log.rounds() == [0, 1]
        log.export_jsonl(tmp_path / "f.jsonl")
        assert read_jsonl(tmp_path / "f.jsonl") == [log.get_round(0), log.get_round(1)]


def test_trainer_uses_plain_noise(tiny_pixel_pipeline):
    cfg = load_config(None, FAST, algo="ddpo", prompt="a red circle", budget=4, images_per_round=4)
    trainer = DDPOTrainer(cfg, tiny_pixel_pipeline)
    assert trainer.start_noise(0, 4, torch.Generator()) is None
    assert trainer.start_noise(3, 4, torch.Generator()) is None


def test_short_run_writes_a_loadable_lora_and_resumes_from_the_logged_scores(tmp_path, never_ask):
    cfg = load_config(None, FAST, algo="ddpo", prompt="two red squares", budget=8, images_per_round=4,
                      out=str(tmp_path / "run"))
    run = train(cfg, show_progress=False)
    log = FeedbackLog(run.feedback_db)
    assert log.n_feedback() == 8 and all(log.get_round(r).scores is not None for r in (0, 1))
    metrics = run.metrics()
    assert [m["round"] for m in metrics] == [0, 1]
    assert {"seconds_representation", "seconds_update", "pg_loss"} <= set(metrics[0])
    assert_lora_loads(run)
    # Scores come back from the log, not good/not-good.
    assert_resume_reproduces_lora(run, cfg, never_ask)
