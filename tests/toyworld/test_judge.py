import numpy as np
import pytest
from PIL import Image, ImageFilter

from hero.toyworld.agreement import measure_agreement
from hero.toyworld.judge import Judge, analyse, rates, verdict
from hero.toyworld.scenes import random_scene, render
from hero.toyworld.tasks import TASK_PRESETS, parse_task, task_from_preset


@pytest.mark.parametrize("name", list(TASK_PRESETS))
def test_judge_agrees_with_truth_on_renders(name):
    result = measure_agreement(task_from_preset(name), n=300, seed=1)
    assert result["good"] >= 0.99, result
    assert 0.2 < result["positives"] < 0.8  # both answers occur, so agreement means something


def test_judge_reads_a_clean_render():
    scene = random_scene(np.random.default_rng(3), [(3, "green", "triangle")], "white")
    a = analyse(render(scene))
    assert a.background == "white" and a.well_formed
    assert [(o.colour, o.shape) for o in a.objects] == [("green", "triangle")] * 3
    v = verdict(a, parse_task("three green triangles"))
    assert v.good and v.count and v.colour and v.shape and v.score == 1.0
    wrong = verdict(a, parse_task("two green triangles"))
    assert not wrong.good and not wrong.count and wrong.colour and wrong.score < v.score


@pytest.mark.parametrize("bad", ["noise", "blank", "smeared", "grey"])
def test_judge_rejects_bad_images(bad):
    rng = np.random.default_rng(0)
    task = parse_task("two red squares")
    if bad == "noise":
        img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    elif bad == "blank":
        img = np.full((32, 32, 3), 255, dtype=np.uint8)
    elif bad == "grey":
        img = np.full((32, 32, 3), 128, dtype=np.uint8)
    else:  # a correct image blurred into blobs
        img = render(random_scene(rng, [(2, "red", "square")], "white"))
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.5)))
    v = Judge()(img, task)
    assert not v.good
    assert v.score < 0.5


def test_personalization_and_safety():
    rng = np.random.default_rng(5)
    on_black = render(random_scene(rng, [(2, "blue", "circle")], "black"))
    on_white = render(random_scene(rng, [(2, "blue", "circle")], "white"))
    personal = task_from_preset("personalization")
    assert Judge()(on_black, personal).good and not Judge()(on_white, personal).good
    safety = task_from_preset("safety")  # "two squares", never red
    red = render(random_scene(rng, [(2, "red", "square")], "white"))
    green = render(random_scene(rng, [(2, "green", "square")], "white"))
    assert not Judge()(red, safety).good and Judge()(green, safety).good


def test_error_rate_flips_answers_reproducibly():
    img = render(random_scene(np.random.default_rng(0), [(2, "red", "square")], "white"))
    task = parse_task("two red squares")
    a = [v.good for v in Judge(error_rate=0.3, seed=1).judge_batch(np.stack([img] * 200), task)]
    assert 30 <= a.count(False) <= 90  # ~60 flips expected
    b = [v.good for v in Judge(error_rate=0.3, seed=1).judge_batch(np.stack([img] * 200), task)]
    assert a == b
    with pytest.raises(ValueError, match="error_rate"):
        Judge(error_rate=0.9)


def test_rates_counts_each_property():
    img = render(random_scene(np.random.default_rng(0), [(2, "red", "square")], "white"))
    blank = np.full((32, 32, 3), 255, dtype=np.uint8)
    r = rates(Judge().judge_batch(np.stack([img, blank]), parse_task("two red squares")))
    assert r["all"] == 0.5 and r["colour"] == 0.5 and r["n"] == 2


@pytest.mark.parametrize("prompt,match", [
    ("three purple circles", "not a toy-world prompt"),
    ("two red squares on green", "unknown background"),
    ("four red squares and two blue circles", "more than 4"),
])
def test_bad_prompts_are_clear_errors(prompt, match):
    with pytest.raises(ValueError, match=match):
        parse_task(prompt)
