"""The reward-model interface: images + prompts in, one score per image out.

Images come as the rollout gives them, uint8 numpy (N, H, W, 3), or as the pipeline's pixels, a float tensor in
[-1, 1] of shape (N, 3, H, W). ``score`` never tracks gradients and returns a CPU float tensor (N,);
a model with ``differentiable = True`` also has ``score_pixels``, which keeps the graph from the pixels to the
score (SEIKO and reward backpropagation need it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

Images = np.ndarray | torch.Tensor
Prompts = str | Sequence[str]


class RewardModelUnavailable(NotImplementedError, ValueError):
    """A reward model that cannot be loaded in this environment (the message says why and what to do)."""


class RewardModel(ABC):
    """Scores images (and their prompts); higher is better."""

    name: str = "reward"
    differentiable: bool = False

    @abstractmethod
    def score(self, images: Images, prompts: Prompts) -> torch.Tensor:
        """One score per image, a (N,) float tensor on the CPU, without gradients."""

    def score_pixels(self, pixels: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """Scores of (N, 3, H, W) pixels in [-1, 1], differentiable w.r.t. ``pixels`` (when the model allows)."""
        raise NotImplementedError(f"reward model {self.name!r} is not differentiable: use score(), not score_pixels()")

    def __call__(self, images: Images, prompts: Prompts) -> torch.Tensor:
        return self.score(images, prompts)


def as_uint8(images: Images) -> np.ndarray:
    """(N, H, W, 3) uint8 from uint8 numpy images or from a float tensor in [-1, 1] of shape (N, 3, H, W)."""
    if isinstance(images, torch.Tensor):
        x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3) or a float tensor (N, 3, H, W) in [-1, 1], "
                         f"got {images.dtype} {images.shape}")
    return images


def as_pixels(images: Images, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 3, H, W) float32 in [-1, 1] on ``device``; a tensor keeps its graph."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"pixel tensors must be (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        return images.to(device=device, dtype=torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(as_uint8(images))).to(device)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def as_prompts(prompts: Prompts, n: int) -> list[str]:
    """One prompt per image: a single string is repeated."""
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} images")
    return prompts


def require_path(path: str | Path | None, what: str, option: str, directory: bool = False) -> Path:
    """The local path, or a one-line FileNotFoundError naming the path and the option that sets it."""
    if path is None or str(path) == "":
        raise FileNotFoundError(f"{what}: no path given (set {option}, e.g. --set {option}=/path)")
    p = Path(path).expanduser()
    if not (p.is_dir() if directory else p.is_file()):
        kind = "folder" if directory else "file"
        raise FileNotFoundError(f"{what}: {kind} {p} does not exist (set {option} to a local {kind}; "
                                "nothing is downloaded)")
    return p
