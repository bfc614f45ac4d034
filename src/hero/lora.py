"""LoRA on the UNet (peft), saved and loaded in the diffusers LoRA format.

Which layers the adapter reaches is a setting (``lora.targets``): a preset name from ``TARGET_PRESETS`` or an
explicit list of module-name suffixes (peft's ``target_modules``). "attention" is the adapter of the HERO and
DDPO papers; "wide" also reaches the resnets (at every resolution, not only where there is attention), the
time-embedding projections, proj_in/proj_out and the feed-forwards: on the built-in model the attention sits
only at 8×8, and an adapter there cannot change much of a 32×32 image (docs/learning.md, "LoRA coverage").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from hero.models.denoiser import UNET_TARGET_PRESETS, resolve_targets
from hero.models.families import denoiser_for
from hero.runs.atomic import atomic_write_bytes

__all__ = ["DEFAULT_TARGETS", "TARGET_PRESETS", "add_lora", "load_lora", "lora_parameters", "resolve_targets",
           "save_lora"]

TARGET_PRESETS = UNET_TARGET_PRESETS  # the UNet family's; each model family names its own (hero.models.denoiser)
DEFAULT_TARGETS = TARGET_PRESETS["attention"]


def _unet(pipe_or_unet):
    """The denoising network of a pipeline (its family's ``Denoiser.network``), or the network itself."""
    unet = denoiser_for(pipe_or_unet).network if isinstance(pipe_or_unet, DiffusionPipeline) else pipe_or_unet
    return getattr(unet, "_orig_mod", unet)  # unwrap torch.compile


def lora_parameters(pipe_or_unet) -> list[torch.nn.Parameter]:
    """The LoRA parameters of the UNet (trainable or not)."""
    return [p for name, p in _unet(pipe_or_unet).named_parameters() if "lora_" in name]


def add_lora(unet, rank: int = 4, alpha: float = 4, targets: str | Sequence[str] = DEFAULT_TARGETS,
             adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """Freeze the UNet, attach a fresh LoRA adapter (identity at init) and return its trainable parameters.

    Args:
        unet: the UNet (or a pipeline holding one).
        rank, alpha: the adapter's rank r and scale α (the update is α/r·BA).
        targets: a preset name from ``TARGET_PRESETS`` or module-name suffixes (peft's ``target_modules``).
        adapter_name: peft's adapter name.
    """
    unet = _unet(unet)
    targets = resolve_targets(targets)
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
    # peft's own key names ("unet.….lora_A.weight"), which every diffusers LoRA loader reads. Not
    # convert_state_dict_to_diffusers: it renames only the attention keys (to ".lora.down"), and a file that mixes
    # both namings loads with the attention layers silently dropped (a "wide" adapter).
    layers = state
    # The adapter config travels as metadata: without it diffusers infers lora_alpha = rank on load, which
    # silently rescales any adapter trained with alpha != rank.
    # peft keeps target_modules (and the like) as sets, which iterate in a per-process hash order: sorted, the
    # same weights give the same file bytes in every process, so a checksum of the file means something.
    metadata = {k: sorted(v, key=str) if isinstance(v, (set, frozenset)) else v
                for k, v in unet.peft_config[adapter_name].to_dict().items()}
    directory = Path(directory)
    if getattr(pipe_or_unet, "transformer", None) is not None:  # SD 3, FLUX: "transformer." keys, as they load
        type(pipe_or_unet).save_lora_weights(directory, transformer_lora_layers=layers,
                                             transformer_lora_adapter_metadata=metadata)
    else:
        StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers,
                                                  unet_lora_adapter_metadata=metadata)
    # safetensors writes its metadata map in a random order on every call: rewrite the header with sorted keys
    # (the tensor bytes and their offsets stay as they are). Padded with spaces to 8 bytes, as safetensors does.
    path = directory / "pytorch_lora_weights.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    atomic_write_bytes(path, len(text).to_bytes(8, "little") + text + data[8 + n:])
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
        _unet(pipe).requires_grad_(False)
    for p in lora_parameters(pipe):
        if trainable:
            p.data = p.data.float()
        p.requires_grad_(trainable)
