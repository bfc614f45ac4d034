"""``load_reward_model(name, path=..., head_path=..., device=...)``: every reward model by name, from local paths."""

from __future__ import annotations

from pathlib import Path

from hero.rewards.base import RewardModel, RewardModelUnavailable

REWARD_MODELS = ("jpeg", "jpeg-incompressibility", "aesthetic", "pickscore", "hpsv2", "imagereward")
NEEDS_PATH = {"aesthetic": ("path", "head_path"), "pickscore": ("path",), "hpsv2": ("path",), "imagereward": ()}

IMAGEREWARD_UNAVAILABLE = (
    "reward model 'imagereward' cannot be loaded here: the image-reward package (1.5, the latest) imports "
    "apply_chunking_to_forward, find_pruneable_heads_and_indices and prune_linear_layer from "
    "transformers.modeling_utils, which transformers 5.x no longer has (the second is gone altogether); it pins "
    "timm==0.6.13; and it builds its BLIP tokenizer with BertTokenizer.from_pretrained('bert-base-uncased'), a hub "
    "download, while hero runs offline. Use pickscore, hpsv2 or aesthetic instead")


def load_reward_model(name: str, path: str | Path | None = None, head_path: str | Path | None = None,
                      device: str = "cpu", batch_size: int = 32, option_prefix: str = "reward_model.") -> RewardModel:
    """The reward model ``name`` (one of ``REWARD_MODELS``), its weights from local paths only.

    ``path``: a transformers CLIP folder (aesthetic: CLIP ViT-L/14; pickscore: PickScore_v1; hpsv2: a converted
    HPS v2 CLIP); ``head_path``: the aesthetic MLP head (.pth / .safetensors). A missing path is a
    FileNotFoundError naming it and the option (``option_prefix`` + path / head_path) that sets it.
    """
    from hero.rewards.clip_models import AestheticScorer, HPSv2Score, PickScore
    from hero.rewards.jpeg import JpegReward

    option = f"{option_prefix}path"
    if name in ("jpeg", "jpeg-incompressibility"):
        return JpegReward(incompressible=name == "jpeg-incompressibility")
    if name == "aesthetic":
        return AestheticScorer(path, head_path, device, batch_size, option, f"{option_prefix}head_path")
    if name == "pickscore":
        return PickScore(path, device, batch_size, option)
    if name == "hpsv2":
        return HPSv2Score(path, device, batch_size, option)
    if name == "imagereward":
        raise RewardModelUnavailable(IMAGEREWARD_UNAVAILABLE)
    raise ValueError(f"unknown reward model {name!r}: expected one of {', '.join(REWARD_MODELS)}")
