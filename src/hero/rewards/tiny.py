"""Tiny random CLIP folders and aesthetic heads, built from configs in milliseconds (nothing downloaded).

They load exactly like real checkpoints (``load_reward_model("pickscore", path=folder)``), so the tests, and a
user smoke-testing ``--feedback reward:pickscore`` without weights, exercise the real loading code. Their
scores mean nothing.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from hero.rewards.clip_models import AestheticHead


def save_tiny_clip(folder: str | Path, seed: int = 0, projection_dim: int = 24, image_size: int = 32) -> Path:
    """A random CLIPModel (hidden 32, 2 layers, patch 8) and a character-level CLIP tokenizer, saved to ``folder``."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    text = dict(vocab_size=len(vocab), max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                **layers)
    config = CLIPConfig(text_config=text, vision_config=dict(image_size=image_size, patch_size=8, **layers),
                        projection_dim=projection_dim)
    torch.manual_seed(seed)
    folder = Path(folder)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_aesthetic_head(path: str | Path, input_dim: int = 24, seed: int = 0) -> Path:
    """A random LAION-layout aesthetic head (``layers.N.*`` keys) as .safetensors or .pth, by the suffix."""
    torch.manual_seed(seed)
    state = AestheticHead(input_dim).state_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path
