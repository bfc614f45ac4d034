"""Diversity and memorisation: by hand, and on a collapsed set of samples built on purpose from toy scenes."""

import numpy as np
import pytest

from hero.diversity import COPY_DISTANCE, diversity, memorisation, rms_distances
from hero.toyworld.scenes import training_example


def _scenes(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([training_example(rng)[0] for _ in range(n)])


def test_distances_by_hand():
    black, white = np.zeros((1, 2, 2, 3), np.uint8), np.full((1, 2, 2, 3), 255, np.uint8)
    half = black.copy()
    half[0, 0] = 255  # half the pixels white: RMS = √(1/2)
    d = rms_distances(np.concatenate([black, white]), np.concatenate([black, half]))
    assert np.allclose(d.numpy(), [[0, 2**-0.5], [1, 2**-0.5]])
    assert diversity(np.concatenate([black, white, black])) == {"pairwise": pytest.approx((1 + 1 + 0 + 1 + 0 + 1) / 6),
                                                                "duplicate_rate": pytest.approx(2 / 3)}
    assert np.isnan(diversity(black)["pairwise"])
    m = memorisation(np.concatenate([black, white]), black)
    assert m == {"nn_distance": pytest.approx(0.5), "copy_rate": 0.5}
    assert np.isnan(memorisation(black, black[:0])["copy_rate"])
    with pytest.raises(ValueError, match="different sizes"):
        rms_distances(black, np.zeros((1, 3, 3, 3), np.uint8))


def test_a_collapsed_set_scores_worse_than_fresh_samples():
    """Collapse: every 'sample' is one of three training images plus a little noise (what a model that memorised
    them draws); fresh samples are other scenes of the same world."""
    training = _scenes(0, 32)
    fresh = _scenes(1, 64)
    rng = np.random.default_rng(2)
    picks = training[rng.integers(0, 3, 64)].astype(int) + rng.integers(-4, 5, (64, *training.shape[1:]))
    collapsed = np.clip(picks, 0, 255).astype(np.uint8)
    assert diversity(collapsed)["pairwise"] < 0.8 * diversity(fresh)["pairwise"]
    assert diversity(collapsed)["duplicate_rate"] == 1.0 and diversity(fresh)["duplicate_rate"] == 0.0
    healthy, copied = memorisation(fresh, training), memorisation(collapsed, training)
    assert copied["copy_rate"] == 1.0 and healthy["copy_rate"] == 0.0
    assert copied["nn_distance"] < COPY_DISTANCE < healthy["nn_distance"]
