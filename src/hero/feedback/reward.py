"""A reward function as the feedback source ("AI feedback"): good = the top fraction, best = the highest."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from hero.feedback.base import RoundFeedback, mark_best_good, pick_best, prefer


def jpeg_size_kb(images: np.ndarray, quality: int = 95) -> np.ndarray:
    """JPEG file size of each (H, W, 3) uint8 image in kB."""
    sizes = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return np.array(sizes)


REWARD_FUNCTIONS = {
    "jpeg": lambda images: -jpeg_size_kb(images),  # compressibility: smaller files score higher
    "jpeg-incompressibility": jpeg_size_kb,
}


class RewardFeedback:
    """Marks the top ``good_fraction`` of each round good (above the round's quantile) and picks the highest."""

    def __init__(self, reward: str, good_fraction: float = 0.25):
        if reward not in REWARD_FUNCTIONS:
            raise ValueError(f"unknown reward {reward!r}: expected one of {list(REWARD_FUNCTIONS)}")
        self.reward_fn = REWARD_FUNCTIONS[reward]
        self.good_fraction = good_fraction
        self.name = f"reward:{reward}"

    def judge_round(self, round_index: int, prompt: str, images: np.ndarray,
                    current_best: np.ndarray | None) -> RoundFeedback:
        scores = self.reward_fn(images)
        k = max(1, int(round(self.good_fraction * len(scores))))
        threshold = np.sort(scores)[-k]
        good = [bool(s >= threshold) for s in scores]
        best_score = None if current_best is None else float(self.reward_fn(current_best[None])[0])
        best = pick_best(scores, good, best_score)
        return RoundFeedback(good=mark_best_good(good, best), best=best, source=self.name,
                             scores=[float(s) for s in scores])

    def judge_pairs(self, round_index: int, prompt: str, images: np.ndarray,
                    pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """(winner, loser) per candidate pair: the higher reward wins; equal rewards: no preference."""
        return prefer(self.reward_fn(images), pairs)
