"""A reward model as the feedback source ("AI feedback"): it plays the person in any algorithm.

Each round it scores the images (``RoundFeedback.scores``: DDPO's and DPOK's rewards), marks good by a
``threshold``, the ``top_k`` highest, or (neither set) the top ``good_fraction``, and picks as best the highest
good image unless the current best scores at least as high (``pick_best``). For D3PO it prefers the higher score.
A run judged this way can go on with a person: the feedback log does not care who answered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hero.feedback.base import Record, RoundFeedback, mark_best_good, pick_best, prefer
from hero.rewards import RewardModel, jpeg_size_kb, load_reward_model

__all__ = ["RewardFeedback", "RewardModelFeedback", "jpeg_size_kb", "mark_good"]


def mark_good(scores: np.ndarray, threshold: float | None = None, top_k: int | None = None,
              good_fraction: float = 0.25) -> list[bool]:
    """Good = score ≥ ``threshold`` and/or among the ``top_k`` highest; neither set: the top ``good_fraction``
    (at least one image). Scores tied with the k-th highest are all good."""
    scores = np.asarray(scores, dtype=np.float64)
    good = np.ones(len(scores), dtype=bool)
    if threshold is None and top_k is None:
        top_k = max(1, int(round(good_fraction * len(scores))))
    if top_k is not None and len(scores):
        good &= scores >= np.sort(scores)[-min(top_k, len(scores))]
    if threshold is not None:
        good &= scores >= threshold
    return [bool(g) for g in good]


class RewardFeedback:
    """Scores each round with a reward model, marks good by threshold / top-k / top fraction, picks the highest.

    ``reward``: a ``RewardModel`` or a name for ``load_reward_model`` (``jpeg``, ``aesthetic``, ``pickscore``, ...),
    loaded with ``path`` / ``head_path`` / ``device`` / ``batch_size``.
    """

    def __init__(self, reward: str | RewardModel, good_fraction: float = 0.25, threshold: float | None = None,
                 top_k: int | None = None, path: str | Path | None = None, head_path: str | Path | None = None,
                 device: str = "cpu", batch_size: int = 32):
        if isinstance(reward, str):
            reward = load_reward_model(reward, path=path, head_path=head_path, device=device, batch_size=batch_size)
        self.model = reward
        self.good_fraction, self.threshold, self.top_k = good_fraction, threshold, top_k
        self.name = f"reward:{reward.name}"

    def scores(self, prompt: str, images: np.ndarray) -> np.ndarray:
        return self.model.score(images, prompt).double().numpy()

    def judge_round(self, round_index: int, prompt: str, images: np.ndarray, current_best: np.ndarray | None,
                    record: Record | None = None) -> RoundFeedback:
        scores = self.scores(prompt, images)
        good = mark_good(scores, self.threshold, self.top_k, self.good_fraction)
        best_score = None if current_best is None else float(self.scores(prompt, current_best[None])[0])
        best = pick_best(scores, good, best_score)
        return RoundFeedback(good=mark_best_good(good, best), best=best, source=self.name,
                             scores=[float(s) for s in scores])

    def judge_pairs(self, round_index: int, prompt: str, images: np.ndarray, pairs: list[tuple[int, int]],
                    record: Record | None = None) -> list[tuple[int, int]]:
        """(winner, loser) per candidate pair: the higher reward wins; equal rewards: no preference."""
        return prefer(self.scores(prompt, images), pairs)


RewardModelFeedback = RewardFeedback  # the same source under the name the reward-model docs use
