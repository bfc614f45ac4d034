"""LoRA on the UNet attention projections (peft), saved and loaded in the diffusers LoRA format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

__all__ = ["DEFAULT_TARGETS", "add_lora", "load_lora", "lora_parameters", "save_lora"]

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _unet(pipe_or_unet):
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    return getattr(unet, "_orig_mod", unet)  # unwrap torch.compile


def lora_parameters(pipe_or_unet) -> list[torch.nn.Parameter]:
    """The LoRA parameters of the UNet (trainable or not)."""
    return [p for name, p in _unet(pipe_or_unet).named_parameters() if "lora_" in name]


def add_lora(unet, rank: int = 4, alpha: float = 4, targets: Sequence[str] = DEFAULT_TARGETS,
             adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """Freeze the UNet, attach a fresh LoRA adapter (identity at init) and return its trainable parameters."""
    unet = _unet(unet)
    unet.requires_grad_(False)
    # "gaussian" init (A ~ N(0, 1/r), B = 0), as in the diffusers LoRA training scripts: the adapter starts as
    # the identity, so the first rollout after adding it is the base model's.
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    unet.add_adapter(config, adapter_name=adapter_name)
    params = lora_parameters(unet)
    for p in params:
        # Half-precision base models still train fp32 adapters (AdamW on fp16 weights underflows); peft casts
        # activations to the adapter dtype and back.
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def save_lora(pipe_or_unet, directory: str | Path, adapter_name: str | None = None) -> Path:
    """Write the UNet's LoRA as ``pytorch_lora_weights.safetensors`` (diffusers format) into ``directory``."""
    unet = _unet(pipe_or_unet)
    adapter_name = adapter_name or unet.active_adapters()[0]
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    layers = convert_state_dict_to_diffusers(state)
    # The adapter config travels as metadata: without it diffusers infers lora_alpha = rank on load, which
    # silently rescales any adapter trained with alpha != rank.
    metadata = unet.peft_config[adapter_name].to_dict()
    directory = Path(directory)
    StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)
    return directory


def load_lora(pipe, directory: str | Path, adapter_name: str | None = None, trainable: bool = False) -> None:
    """Load a LoRA written by ``save_lora`` (or any diffusers SD LoRA) into ``pipe``; frozen unless ``trainable``."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder" is expected: we train the UNet
    try:
        pipe.load_lora_weights(str(directory), adapter_name=adapter_name)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    # diffusers leaves whatever requires_grad the modules had (base and adapter alike): make it explicit.
    if trainable:  # resuming training: as after add_lora, only the (fp32) adapter trains
        pipe.unet.requires_grad_(False)
    for p in lora_parameters(pipe):
        if trainable:
            p.data = p.data.float()
        p.requires_grad_(trainable)
