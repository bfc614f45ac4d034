"""Diversity and memorisation of a model's samples, reported beside every success rate.

A method can raise its success rate by collapsing onto a handful of the images it was shown: it then draws
the same few pictures whatever the noise. Two measures on pixels (RGB in [0, 1]) make that visible:

- ``diversity``: the mean RMS distance between two evaluation samples (pairs of distinct images), and the
  ``duplicate_rate``, the share of samples that have a near-copy (closer than ``COPY_DISTANCE``) among the other
  samples. A collapsed model draws near-duplicates whatever its noise; the base model's values are the reference.
- ``memorisation``: for each evaluation sample, the RMS distance to its nearest neighbour among the training
  images (the images judged good during the run, which the likelihood methods train on). Reported as the mean
  nearest-neighbour distance and as ``copy_rate``, the share of samples closer than ``COPY_DISTANCE`` to some
  training image: near-copies.

``COPY_DISTANCE`` = 0.05 RMS is about 13 uint8 levels per channel on average: on the built-in model two
independent samples of one prompt are never that close (docs/learning.md, "Diversity and memorisation"), while
a copy with a little noise is. The base model's copy rate against the same training images is the reference.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["COPY_DISTANCE", "diversity", "memorisation", "rms_distances"]

COPY_DISTANCE = 0.05


def _flat(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 → (N, H·W·C) float64 in [0, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255.0)


def rms_distances(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """(len(a), len(b)) RMS pixel distances between two sets of uint8 images of one size."""
    x, y = _flat(a), _flat(b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"images of different sizes: {a.shape[1:]} and {b.shape[1:]}")
    sq = (x**2).sum(1, keepdim=True) + (y**2).sum(1) - 2 * x @ y.T
    return (sq.clamp(min=0) / x.shape[1]).sqrt()


def diversity(images: np.ndarray, max_images: int = 512, copy_distance: float = COPY_DISTANCE) -> dict[str, float]:
    """{"pairwise": mean RMS distance over pairs of distinct images, "duplicate_rate": share of images with
    another image closer than ``copy_distance``} over the first ``max_images``; NaN for fewer than two.

    The pairwise mean is dominated by the largest differences (a white against a black background); the
    duplicate rate is what a collapse onto a few images moves from about 0 to about 1.
    """
    images = images[:max_images]
    if len(images) < 2:
        return {"pairwise": float("nan"), "duplicate_rate": float("nan")}
    d = rms_distances(images, images)
    n = len(images)
    pairwise = float((d.sum() - d.diagonal().sum()) / (n * (n - 1)))
    d.fill_diagonal_(float("inf"))
    return {"pairwise": pairwise, "duplicate_rate": float((d.min(dim=1).values < copy_distance).double().mean())}


def memorisation(samples: np.ndarray, training: np.ndarray, copy_distance: float = COPY_DISTANCE) -> dict[str, float]:
    """{"nn_distance": mean distance to the nearest training image, "copy_rate": share closer than
    ``copy_distance``}; both NaN when there is no training image."""
    if len(training) == 0 or len(samples) == 0:
        return {"nn_distance": float("nan"), "copy_rate": float("nan")}
    nearest = torch.cat([rms_distances(samples[lo: lo + 256], training).min(dim=1).values
                         for lo in range(0, len(samples), 256)])
    return {"nn_distance": float(nearest.mean()), "copy_rate": float((nearest < copy_distance).double().mean())}
