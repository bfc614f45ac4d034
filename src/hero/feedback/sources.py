"""The feedback source a run's ``feedback`` setting names (the web source is built by ``hero.web``)."""

from __future__ import annotations

from hero.feedback.base import FeedbackSource
from hero.feedback.reward import RewardFeedback
from hero.feedback.simulated import PromptSetHuman, SimulatedHuman
from hero.toyworld.tasks import parse_task


def make_feedback_source(spec: str, prompt: str | dict[str, dict], seed: int = 0, task_options: dict | None = None,
                         reward_options: dict | None = None) -> FeedbackSource:
    """"sim", "sim:<error rate>" or "reward:<name>" (the web source: hero.web).

    ``prompt``: the run's prompt, or a prompt set as {prompt: its task options} (``task_options`` unused then):
    the simulated human then judges each prompt's images by that prompt's task.

    ``reward:<name>``: jpeg, jpeg-incompressibility, aesthetic, pickscore, hpsv2 (``hero.rewards``), with
    ``reward_options`` (``TrainConfig.reward_options()``: path, head_path, threshold, top_k, good_fraction, ...).
    """
    if spec == "sim" or spec.startswith("sim:"):
        error_rate = float(spec.split(":", 1)[1]) if ":" in spec else 0.0
        if isinstance(prompt, dict):
            return PromptSetHuman({p: SimulatedHuman(parse_task(p, **opts), error_rate=error_rate, seed=seed + i)
                                   for i, (p, opts) in enumerate(prompt.items())})
        return SimulatedHuman(parse_task(prompt, **(task_options or {})), error_rate=error_rate, seed=seed)
    if spec.startswith("reward:"):
        return RewardFeedback(spec.split(":", 1)[1], **(reward_options or {}))
    raise ValueError(f"unknown feedback source {spec!r}: expected sim, sim:<error rate>, reward:<name> or web")
