"""The "shapes" toy world: scene generator, captions, renderer, tasks and the judge."""

from hero.toyworld.judge import Judge, Verdict, analyse, rates, verdict
from hero.toyworld.scenes import Scene, caption, image_grid, random_scene, render, training_example
from hero.toyworld.tasks import TASK_PRESETS, Task, parse_task, task_from_preset

__all__ = ["Judge", "Verdict", "analyse", "rates", "verdict", "Scene", "caption", "image_grid", "random_scene",
           "render", "training_example", "TASK_PRESETS", "Task", "parse_task", "task_from_preset"]
