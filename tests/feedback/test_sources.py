import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hero.cli import app
from hero.config import ConfigError, TrainConfig, load_config
from hero.feedback import RewardFeedback, SimulatedHuman, make_feedback_source
from hero.feedback.base import pick_best
from hero.feedback.reward import mark_good
from hero.rewards import RewardModel, as_uint8
from hero.rewards.tiny import save_tiny_clip
from hero.runs.feedback_log import FeedbackLog
from hero.toyworld import parse_task, random_scene, render
from hero.train import train


def test_pick_best_indexes_the_round_not_the_good_subset():
    scores = np.array([0.1, 0.9, 0.5, 0.95, 0.7])
    good = [True, False, True, False, True]
    assert pick_best(scores, good, None) == 4  # best *good* image, by its index in the round
    assert pick_best(scores, good, 0.8) is None  # the current best is better: keep it
    assert pick_best(scores, [False] * 5, None) == 3  # first round: the person always points at one
    assert pick_best(scores, [False] * 5, 0.2) is None


def test_simulated_human_answers_like_the_judge():
    rng = np.random.default_rng(0)
    task = parse_task("two red squares")
    images = np.stack([render(random_scene(rng, [(2, "red", "square")], "white")),
                       render(random_scene(rng, [(3, "red", "square")], "white")),
                       render(random_scene(rng, [(2, "blue", "circle")], "black")),
                       render(random_scene(rng, [(2, "red", "square")], "black"))])
    fb = SimulatedHuman(task).judge_round(0, task.prompt, images, None)
    assert fb.good == [True, False, False, True]
    assert fb.best == 0 and fb.n_feedback == 4
    # Later round: the current best is as good as anything new, so it is kept.
    assert SimulatedHuman(task).judge_round(1, task.prompt, images, images[3]).best is None


def test_reward_feedback_marks_the_top_quarter():
    rng = np.random.default_rng(0)
    flat = np.full((32, 32, 3), 255, dtype=np.uint8)
    noisy = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(7)]
    images = np.stack([noisy[0], flat, *noisy[1:]])
    fb = RewardFeedback("jpeg").judge_round(0, "x", images, None)
    assert fb.best == 1 and fb.good[1] and sum(fb.good) == 2
    fb = RewardFeedback("jpeg-incompressibility").judge_round(0, "x", images, None)
    assert not fb.good[1]


def test_make_feedback_source():
    assert make_feedback_source("sim", "two red squares").name == "sim"
    assert make_feedback_source("sim:0.1", "two red squares").judge.error_rate == 0.1
    assert make_feedback_source("reward:jpeg", "anything").name == "reward:jpeg"


class MeanBrightness(RewardModel):
    """A stand-in reward model: the image's mean pixel value (scores are known exactly)."""

    name = "brightness"

    def score(self, images, prompts):
        return torch.from_numpy(as_uint8(images).reshape(len(images), -1).mean(1))


def _grey(levels):
    return np.stack([np.full((8, 8, 3), v, dtype=np.uint8) for v in levels])


def test_mark_good_by_threshold_top_k_or_fraction():
    scores = np.array([0.1, 0.9, 0.5, 0.95, 0.7, 0.5])
    assert mark_good(scores, threshold=0.6) == [False, True, False, True, True, False]
    assert mark_good(scores, top_k=2) == [False, True, False, True, False, False]
    assert mark_good(scores, top_k=4) == [False, True, True, True, True, True]  # tied with the 4th: good too
    assert mark_good(scores, threshold=0.92, top_k=2) == [False, False, False, True, False, False]
    assert mark_good(scores, good_fraction=0.5) == mark_good(scores, top_k=3)
    assert mark_good(scores[:2], top_k=5) == [True, True]


def test_reward_model_feedback_plays_the_human():
    images = _grey([10, 200, 90, 250, 120, 30])
    source = RewardFeedback(MeanBrightness(), top_k=2)
    fb = source.judge_round(0, "x", images, None)
    assert source.name == "reward:brightness" and fb.scores == [10, 200, 90, 250, 120, 30]
    assert fb.good == [False, True, False, True, False, False] and fb.best == 3
    assert source.judge_round(1, "x", images, _grey([255])[0]).best is None  # the current best is brighter: kept
    fb = RewardFeedback(MeanBrightness(), threshold=100).judge_round(1, "x", images, _grey([210])[0])
    assert fb.good == [False, True, False, True, True, False] and fb.best == 3
    # Nothing above the threshold: in round 0 the highest is still picked (and so good), later none is.
    fb = RewardFeedback(MeanBrightness(), threshold=251).judge_round(0, "x", images, None)
    assert fb.best == 3 and fb.good == [False, False, False, True, False, False]
    assert RewardFeedback(MeanBrightness(), threshold=251).judge_round(1, "x", images, images[0]).best is None
    assert source.judge_pairs(0, "x", _grey([5, 9, 9]), [(0, 1), (2, 1), (1, 2)]) == [(1, 0)]


def test_reward_sources_from_the_config(tmp_path):
    clip = save_tiny_clip(tmp_path / "clip")
    cfg = load_config(None, [f"reward_model.path={clip}", "reward_model.top_k=1"], prompt="a red circle",
                      feedback="reward:pickscore")
    source = make_feedback_source(cfg.feedback, cfg.prompt, reward_options=cfg.reward_options())
    assert source.name == "reward:pickscore" and source.top_k == 1 and source.model.differentiable
    fb = source.judge_round(0, cfg.prompt, np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), np.uint8), None)
    assert sum(fb.good) == 1 and fb.good[fb.best] and len(fb.scores) == 4
    with pytest.raises(ConfigError, match=r"missing value for 'reward_model.head_path'.*reward:aesthetic"):
        load_config(None, [f"reward_model.path={clip}"], prompt="x", feedback="reward:aesthetic")
    with pytest.raises(ConfigError, match="reward_model.top_k"):
        load_config(None, ["reward_model.top_k=0"], prompt="x")
    with pytest.raises(FileNotFoundError, match="reward_model.path"):
        make_feedback_source("reward:hpsv2", "x", reward_options={"path": str(tmp_path / "none")})


def test_train_with_ai_feedback_then_continue_with_a_person(tmp_path):
    """`hero train --feedback reward:pickscore` (a tiny CLIP) on the built-in model; the run then goes on with
    another judge (the simulated human standing in for the person) from its checkpoint."""
    clip, out = save_tiny_clip(tmp_path / "clip"), tmp_path / "run"
    res = CliRunner().invoke(app, [
        "train", "--prompt", "two red squares", "--feedback", "reward:pickscore", "--budget", "8",
        "--images-per-round", "4", "--out", str(out), "--no-progress", "--set", f"reward_model.path={clip}",
        "--set", "sampler.steps=3", "--set", "pg.timesteps_per_traj=1", "--set", "hero.encoder_epochs=2",
        "--set", "likelihood.steps_per_round=2", "--set", "likelihood.batch_size=4"])
    assert res.exit_code == 0, res.output
    log = FeedbackLog(out / "feedback.sqlite")
    assert log.rounds() == [0, 1] and {log.get_round(r).source for r in (0, 1)} == {"reward:pickscore"}
    assert len(log.get_round(1).scores) == 4
    log.close()
    cfg = TrainConfig.from_yaml(out / "config.yaml").model_copy(update={"feedback": "sim", "budget": 12})
    train(cfg, resume=True, show_progress=False)
    with FeedbackLog(out / "feedback.sqlite") as log:
        assert log.rounds() == [0, 1, 2] and log.get_round(2).source == "sim" and log.n_feedback() == 12
