"""CLIP-based reward models, loaded from local transformers folders: LAION aesthetic, PickScore, HPSv2-style.

Preprocessing (resize the short side to the model's image size, centre crop, CLIP mean/std) is done in torch,
so ``score_pixels`` is differentiable w.r.t. the pixels; the weights are frozen.

- ``AestheticScorer``: the LAION improved aesthetic predictor: CLIP ViT-L/14 image embedding, L2-normalised,
  through an MLP head (768 → 1024 → 128 → 64 → 16 → 1, the head's state dict from a local .pth/.safetensors).
- ``PickScore``: exp(logit_scale)·cos(image, text) of the PickScore CLIP (a transformers CLIPModel folder).
- ``HPSv2Score``: cos(image, text) of a CLIP fine-tuned on human preferences (HPS v2's scoring rule). The
  official HPS v2 weights are an open_clip ViT-H/14 checkpoint: convert them to a transformers CLIP folder first.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hero.rewards.base import Images, Prompts, RewardModel, as_pixels, as_prompts, require_path

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(pixels: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels → CLIP input: short side resized to ``size`` (bicubic), centre crop, normalised."""
    x = (pixels + 1) / 2
    h, w = x.shape[-2:]
    nh, nw = max(size, round(h * size / min(h, w))), max(size, round(w * size / min(h, w)))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=nh < h)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _features(out) -> torch.Tensor:
    # transformers 4.x returns the projected features; 5.x a model output with them as pooler_output
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class ClipReward(RewardModel):
    """A frozen CLIP from a local folder: normalised image and text features; subclasses turn them into scores."""

    differentiable = True
    needs_text = True

    def __init__(self, clip_path: str | Path, device: str = "cpu", batch_size: int = 32,
                 option: str = "reward_model.path"):
        from transformers import AutoTokenizer, CLIPModel

        what = f"reward model {self.name!r} needs a local CLIP folder (transformers format)"
        path = require_path(clip_path, what, option, directory=True)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{what}: {path / 'config.json'} is missing (save the model with "
                                    f"save_pretrained, or convert it to transformers format; set {option})")
        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True) if self.needs_text else None
        self.device, self.batch_size, self.path = torch.device(device), batch_size, path
        self.image_size = int(self.model.config.vision_config.image_size)
        mean, std = _image_stats(path)
        self.mean = torch.tensor(mean, device=self.device)
        self.std = torch.tensor(std, device=self.device)
        self._text_cache: dict[str, torch.Tensor] = {}

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N, D) of [-1, 1] pixels, differentiable."""
        x = clip_preprocess(as_pixels(pixels, self.device), self.image_size, self.mean, self.std)
        return _normalise(_features(self.model.get_image_features(pixel_values=x)))

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), computed once per distinct prompt."""
        new = sorted(set(prompts) - set(self._text_cache))
        if new:
            limit = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
            tokens = self.tokenizer(new, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            out = self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()})
            self._text_cache.update(zip(new, _normalise(_features(out)), strict=True))
        return torch.stack([self._text_cache[p] for p in prompts])

    def score_pixels(self, pixels: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        image = self.image_features(pixels)
        text = self.text_features(as_prompts(prompts, len(pixels))) if self.needs_text else None
        return self.from_features(image, text)

    def from_features(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, images: Images, prompts: Prompts) -> torch.Tensor:
        prompts = as_prompts(prompts, len(images))
        out = [self.score_pixels(as_pixels(images[i:i + self.batch_size], self.device),
                                 prompts[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).float().cpu()


def _image_stats(path: Path) -> tuple[list[float], list[float]]:
    """The folder's image_mean / image_std (preprocessor_config.json), else CLIP's."""
    cfg = path / "preprocessor_config.json"
    data = json.loads(cfg.read_text()) if cfg.is_file() else {}
    return list(data.get("image_mean", CLIP_MEAN)), list(data.get("image_std", CLIP_STD))


class PickScore(ClipReward):
    """PickScore: exp(logit_scale) · cos(image, text), as the PickScore_v1 model card computes it."""

    name = "pickscore"

    def from_features(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        return self.model.logit_scale.exp() * (image * text).sum(-1)


class HPSv2Score(ClipReward):
    """HPS v2's rule: cos(image, text) under a CLIP fine-tuned for human preference (a transformers folder)."""

    name = "hpsv2"

    def __init__(self, clip_path: str | Path, device: str = "cpu", batch_size: int = 32,
                 option: str = "reward_model.path"):
        if clip_path is not None and Path(clip_path).suffix in (".pt", ".pth", ".bin") and Path(clip_path).is_file():
            raise ValueError(f"reward model 'hpsv2': {clip_path} is a checkpoint file (the official HPS v2 weights "
                             "are an open_clip ViT-H/14 state dict); convert it to a transformers CLIP folder "
                             f"(config.json, weights, tokenizer) and set {option} to that folder")
        super().__init__(clip_path, device, batch_size, option)

    def from_features(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        return (image * text).sum(-1)


class AestheticHead(nn.Module):
    """The LAION improved-aesthetic-predictor MLP; key names match its released state dict (layers.N.*)."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                    nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                                    nn.Linear(16, 1))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding).squeeze(-1)


def load_aesthetic_head(path: str | Path, input_dim: int, option: str = "reward_model.head_path") -> AestheticHead:
    """The head's weights from a local .pth/.pt/.safetensors state dict; a mismatch is one error naming the file."""
    path = require_path(path, "reward model 'aesthetic' needs the MLP head's weights", option)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"aesthetic head {path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("layers.") for k in state):
        state = {f"layers.{k}": v for k, v in state.items()}
    head = AestheticHead(input_dim)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        wrong = sorted(f"{k}: {got.get(k, 'missing')} (expected {expected.get(k, 'none')})"
                       for k in expected.keys() | got.keys() if got.get(k) != expected.get(k))
        raise ValueError(f"aesthetic head {path} does not fit Linear({input_dim}, 1024)-...-Linear(16, 1) "
                         f"(input = the CLIP projection dim {input_dim}): {'; '.join(wrong[:4])}")
    head.load_state_dict(state)
    return head


class AestheticScorer(ClipReward):
    """LAION aesthetic predictor: MLP head on the L2-normalised CLIP (ViT-L/14) image embedding; prompts unused."""

    name = "aesthetic"
    needs_text = False

    def __init__(self, clip_path: str | Path, head_path: str | Path, device: str = "cpu", batch_size: int = 32,
                 option: str = "reward_model.path", head_option: str = "reward_model.head_path"):
        require_path(head_path, "reward model 'aesthetic' needs the MLP head's weights", head_option)
        super().__init__(clip_path, device, batch_size, option)
        dim = int(self.model.config.projection_dim)
        self.head = load_aesthetic_head(head_path, dim, head_option).to(self.device).eval().requires_grad_(False)

    def from_features(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        return self.head(image)
