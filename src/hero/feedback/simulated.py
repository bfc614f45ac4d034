"""The simulated human: the toy-world judge answering exactly what a person answers in the web page."""

from __future__ import annotations

import numpy as np

from hero.feedback.base import Record, RoundFeedback, mark_best_good, pick_best, prefer
from hero.toyworld.judge import Judge, Verdict, analyse, verdict
from hero.toyworld.tasks import Task


def reported_score(v: Verdict) -> float:
    """The graded score the simulated person reports, consistent with its (possibly flipped) good answer.

    The judge's score is 0.5·(partial credit) + 0.5·good; with ``error_rate > 0`` the judge flips ``good`` but
    leaves ``score``, so a reward-based algorithm would see the noiseless truth while HERO sees the noisy marks.
    Re-deriving the good half from the reported answer gives every algorithm the same noisy person.
    """
    true_good = v.colour and v.shape and v.count and v.background and v.binding and v.well_formed \
        and v.preference and v.safe
    return float(v.score + 0.5 * (float(v.good) - float(true_good)))


class SimulatedHuman:
    """Good = the judge's verdict (flipped with ``error_rate``); best = the highest judge score."""

    def __init__(self, task: Task, error_rate: float = 0.0, seed: int = 0):
        self.task = task
        self.judge = Judge(error_rate=error_rate, seed=seed)
        self.name = "sim" if error_rate == 0 else f"sim:{error_rate}"

    def judge_round(self, round_index: int, prompt: str, images: np.ndarray, current_best: np.ndarray | None,
                    record: Record | None = None) -> RoundFeedback:
        verdicts = self.judge.judge_batch(images, self.task)
        scores = np.array([v.score for v in verdicts])
        best_score = None if current_best is None else verdict(analyse(current_best), self.task).score
        good = [bool(v.good) for v in verdicts]
        best = pick_best(scores, good, best_score)
        return RoundFeedback(good=mark_best_good(good, best), best=best, source=self.name,
                             scores=[reported_score(v) for v in verdicts])

    def judge_pairs(self, round_index: int, prompt: str, images: np.ndarray, pairs: list[tuple[int, int]],
                    record: Record | None = None) -> list[tuple[int, int]]:
        """(winner, loser) per candidate pair: the higher graded score wins; equal scores: no preference."""
        scores = np.array([reported_score(v) for v in self.judge.judge_batch(images, self.task)])
        return prefer(scores, pairs)


class PromptSetHuman:
    """The simulated human for a prompt set: one ``SimulatedHuman`` per prompt, each judging by its own task."""

    def __init__(self, humans: dict[str, SimulatedHuman]):
        self.humans = humans
        self.name = next(iter(humans.values())).name

    def _for(self, prompt: str) -> SimulatedHuman:
        if prompt not in self.humans:
            raise ValueError(f"the simulated human has no task for {prompt!r} (not in the run's prompt set)")
        return self.humans[prompt]

    def judge_round(self, round_index: int, prompt: str, images: np.ndarray, current_best: np.ndarray | None,
                    record: Record | None = None) -> RoundFeedback:
        return self._for(prompt).judge_round(round_index, prompt, images, current_best, record)

    def judge_pairs(self, round_index: int, prompt: str, images: np.ndarray, pairs: list[tuple[int, int]],
                    record: Record | None = None) -> list[tuple[int, int]]:
        return self._for(prompt).judge_pairs(round_index, prompt, images, pairs, record)
