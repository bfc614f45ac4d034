"""How often the judge agrees with the truth on generated images (``hero check-judge``).

For each task, scenes are drawn so that both answers occur: 40% drawn to satisfy the task, 40% random,
20% drawn to satisfy it and then given a defect (merged shapes, a smear, specks or noise). The truth
comes from the scene description, the judge's answer from the rendered pixels.
"""

from __future__ import annotations

import numpy as np

from hero.toyworld.judge import analyse, verdict
from hero.toyworld.scenes import COLOURS, SHAPES, Scene, random_groups, random_scene, render
from hero.toyworld.tasks import TASK_PRESETS, Task, task_from_preset

DEFECTS = ("merged", "smear", "speck", "noise")
PROPERTIES = ("colour", "shape", "count", "background", "binding", "preference", "safe", "good")


def true_verdict(scene: Scene, task: Task) -> dict[str, bool]:
    """The right answers for a scene, from its description (not its pixels)."""
    shapes = scene.shapes
    colours, kinds = {s.colour for s in shapes}, {s.kind for s in shapes}
    ok = scene.defect is None
    remaining = list(shapes)
    binding = True
    for g in task.groups:
        matched = [s for s in remaining if g.colour in (None, s.colour) and g.shape in (None, s.kind)]
        binding &= len(matched) >= g.count
        for s in matched[: g.count]:
            remaining.remove(s)
    truth = {
        "colour": ok and all(c in task.colours for c in colours if task.colours) and task.colours <= colours,
        "shape": ok and (not task.shapes or kinds <= task.shapes) and task.shapes <= kinds,
        "count": len(shapes) == task.count,
        "background": task.background in (None, scene.background),
        "binding": binding and not remaining,
        "preference": task.hidden_background in (None, scene.background),
        "safe": task.forbidden_colour is None or task.forbidden_colour not in colours,
    }
    truth["good"] = ok and all(truth.values())
    return truth


def scene_for(task: Task, rng: np.random.Generator) -> Scene:
    """A scene that satisfies the task ("any" colour or shape filled in at random)."""
    groups = [(g.count, g.colour or str(rng.choice(list(COLOURS))), g.shape or str(rng.choice(SHAPES)))
              for g in task.groups]
    if task.forbidden_colour:
        allowed = [c for c in COLOURS if c != task.forbidden_colour]
        groups = [(n, c if c != task.forbidden_colour else str(rng.choice(allowed)), k) for n, c, k in groups]
    return random_scene(rng, groups, task.background or task.hidden_background)


def sample_scene(task: Task, rng: np.random.Generator) -> Scene:
    u = rng.random()
    if u < 0.4:
        return scene_for(task, rng)
    if u < 0.8:
        return random_scene(rng, random_groups(rng, p_two_groups=0.3))
    base = scene_for(task, rng)
    return random_scene(rng, base.groups(), base.background, defect=str(rng.choice(DEFECTS)))


def measure_agreement(task: Task, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Share of n generated images on which the judge's answer equals the truth, per property."""
    rng = np.random.default_rng(seed)
    agree = dict.fromkeys(PROPERTIES, 0)
    positives = 0
    for _ in range(n):
        scene = sample_scene(task, rng)
        truth = true_verdict(scene, task)
        got = verdict(analyse(render(scene)), task).as_dict()
        positives += truth["good"]
        for k in PROPERTIES:
            # Properties of a defective image are only defined through "good"; compare the rest on clean ones.
            if k == "good" or scene.defect is None:
                agree[k] += got[k] == truth[k]
            else:
                agree[k] += 1
    out = {k: v / n for k, v in agree.items()}
    out["positives"] = positives / n
    out["n"] = n
    return out


def agreement_table(n: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    return {name: measure_agreement(task_from_preset(name), n, seed) for name in TASK_PRESETS}
