"""The feedback interface: a round of images in, "which are good and which one is best" out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from hero.runs.feedback_log import RoundFeedback  # the one record of a round: what a source returns is what is logged

Record = Callable[[RoundFeedback], None]  # the round loop's writer of this round (``hero.runs.RoundRecorder``)


class FeedbackSource(Protocol):
    """Returns feedback; the round loop records it. ``record`` is the loop's writer of the round: only a source
    that must confirm an answer once it is on disk (the web page) calls it, before it confirms; the loop records
    the answer of any other source when it returns."""

    name: str

    def judge_round(self, round_index: int, prompt: str, images: np.ndarray, current_best: np.ndarray | None,
                    record: Record | None = None) -> RoundFeedback:
        """Mark each image good or not and pick one best among the good ones and ``current_best``."""
        ...

    # Optional, for prompt sets: a source that shows a whole round at once (the web page) has
    #     judge_prompt_set(round_index, images, prompts, current_bests, record=None) -> RoundFeedback
    # with each image's prompt (grouped) and each prompt's current best; it answers a best per prompt (``bests``).
    # Any other source is asked judge_round once per prompt group (``hero.train.judge_prompt_groups``).

    # Optional, for pairwise algorithms (D3PO): a source that has it is asked
    #     judge_pairs(round_index, prompt, images, pairs, record=None) -> list[(winner, loser)]
    # for each candidate pair (i, j); a tie (no preference) gives no pair. One image judged = one feedback.


def prefer(scores: np.ndarray, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(winner, loser) for each candidate pair by the higher score; equal scores: no preference, no pair."""
    out = []
    for i, j in pairs:
        if scores[i] != scores[j]:
            out.append((i, j) if scores[i] > scores[j] else (j, i))
    return out


def pick_best(scores: np.ndarray, good: list[bool], current_best_score: float | None) -> int | None:
    """Index of the best image among the good ones, or None when the current best is at least as good.

    The first round (no current best) picks among all images, good or not: the person always points at one.
    """
    candidates = [i for i, g in enumerate(good) if g]
    if current_best_score is None:
        candidates = candidates or list(range(len(scores)))
    if not candidates:
        return None
    i = max(candidates, key=lambda j: (scores[j], -j))  # highest score, then the lowest index
    if current_best_score is not None and current_best_score >= scores[i]:
        return None
    return i


def mark_best_good(good: list[bool], best: int | None) -> list[bool]:
    """The best image is always good (the web page enforces the same rule): in a first round without a good
    image, the one the person points at becomes the only good one, HERO's anchor."""
    good = list(good)
    if best is not None:
        good[best] = True
    return good
