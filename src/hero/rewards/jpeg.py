"""DDPO's JPEG rewards: compressibility (smaller files score higher) and incompressibility. Not differentiable."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from hero.rewards.base import Images, Prompts, RewardModel, as_uint8


def jpeg_size_kb(images: np.ndarray, quality: int = 95) -> np.ndarray:
    """JPEG file size of each (H, W, 3) uint8 image in kB."""
    sizes = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return np.array(sizes)


class JpegReward(RewardModel):
    """−(JPEG size in kB) ("jpeg", compressibility) or +(JPEG size in kB) ("jpeg-incompressibility")."""

    differentiable = False

    def __init__(self, incompressible: bool = False, quality: int = 95):
        self.sign = 1.0 if incompressible else -1.0
        self.quality = quality
        self.name = "jpeg-incompressibility" if incompressible else "jpeg"

    def score(self, images: Images, prompts: Prompts = "") -> torch.Tensor:
        return torch.from_numpy(self.sign * jpeg_size_kb(as_uint8(images), self.quality))  # float64: the sizes exactly
