import numpy as np

from hero.feedback import RewardFeedback, SimulatedHuman, make_feedback_source
from hero.feedback.base import pick_best
from hero.toyworld import parse_task, random_scene, render


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
