"""The simulated human: the toy-world judge answering exactly what a person answers in the web page."""

from __future__ import annotations

import numpy as np

from hero.feedback.base import RoundFeedback, mark_best_good, pick_best
from hero.toyworld.judge import Judge, analyse, verdict
from hero.toyworld.tasks import Task


class SimulatedHuman:
    """Good = the judge's verdict (flipped with ``error_rate``); best = the highest judge score."""

    def __init__(self, task: Task, error_rate: float = 0.0, seed: int = 0):
        self.task = task
        self.judge = Judge(error_rate=error_rate, seed=seed)
        self.name = "sim" if error_rate == 0 else f"sim:{error_rate}"

    def judge_round(self, round_index: int, prompt: str, images: np.ndarray,
                    current_best: np.ndarray | None) -> RoundFeedback:
        verdicts = self.judge.judge_batch(images, self.task)
        scores = np.array([v.score for v in verdicts])
        best_score = None if current_best is None else verdict(analyse(current_best), self.task).score
        good = [bool(v.good) for v in verdicts]
        best = pick_best(scores, good, best_score)
        return RoundFeedback(good=mark_best_good(good, best), best=best, source=self.name)
