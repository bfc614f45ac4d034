"""One entry point for every model: ``load_pipeline("tiny-shapes")``, a local diffusers folder, or a single file.

Real checkpoints load from local paths only (nothing is downloaded at run time):

- a diffusers pipeline folder (``save_pretrained`` / a Hub snapshot): SD 1.x/2.x, SDXL or a pixel-space pipeline,
  the family read from its ``model_index.json``;
- a single-file SD 1.x/2.x checkpoint in the original (CompVis / Stability) layout, ``.safetensors`` or
  ``.ckpt``, through diffusers' ``from_single_file``. Such a file holds weights only, so the architecture comes
  from ``model_config_dir``: a local diffusers folder of the same kind (``model_index.json``, each component's
  ``config.json``, ``tokenizer/``, ``scheduler/``; its weights are not read). For SD 1.5 that is a copy of the
  stable-diffusion-v1-5 folder's small files; for SD 2.x the 2.x one (768 px v-prediction or 512 px ε).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import SingleFileComponentError

from hero.config import SINGLE_FILE_SUFFIXES
from hero.models.families import denoiser_for
from hero.models.pixel_pipeline import PixelStableDiffusionPipeline
from hero.models.tiny_shapes import load_text_encoder, sampling_scheduler, shipped_model_dir

BUILTIN = ("tiny-shapes",)
# model_index.json's _class_name -> what loads it (None: the SD 1.x/2.x or pixel-space path below)
FAMILIES = {"StableDiffusionPipeline": None, "PixelStableDiffusionPipeline": None,
            "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
            "StableDiffusion3Pipeline": StableDiffusion3Pipeline, "FluxPipeline": FluxPipeline}
FLOW_FAMILIES = (StableDiffusion3Pipeline, FluxPipeline)  # keep their flow scheduler (the others: DDIM)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (x86 avx512_bf16 or AMX-BF16 flags; False where unknown)."""
    try:
        flags = cpuinfo.read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


CPU_BF16_ENV = "HERO_CPU_BF16"  # "1" or "0": overrides the CPU's flags for "auto" (a VM may hide them)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``precision`` itself, or for "auto" what suits ``device``: bf16 where it is native, else fp32.

    On a CPU without bf16 instructions autocast emulates it: the built-in UNet's forward took 254 ms per image
    against 12 ms in fp32 on such a machine (docs/speed.md), so "auto" never picks it there. On a CPU the
    environment variable ``HERO_CPU_BF16`` (1 or 0), when set, decides instead of the CPU's flags.
    """
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        forced = os.environ.get(CPU_BF16_ENV, "").strip()
        if forced not in ("", "0", "1"):
            raise ValueError(f"{CPU_BF16_ENV}={forced!r}: expected 1 (bf16) or 0 (fp32), or leave it unset")
        native = forced == "1" if forced else cpu_has_native_bf16()
        return "bf16" if native else "fp32"
    return "fp32"


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype frozen weights are stored in for a run's ``precision`` ("fp32", "bf16", "fp16")."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def require_device(device: str | torch.device) -> None:
    """Raise a ValueError that says what to do when ``device`` ("cuda", "cuda:1", "mps", ...) is not on this
    machine, before anything is loaded or written (torch's own error comes late, as a traceback)."""
    device = torch.device(device)
    kind = device.type
    if kind == "cpu":
        return
    backend = getattr(torch, kind, None) if kind != "mps" else torch.backends.mps
    count = torch.cuda.device_count() if kind == "cuda" else None
    available = backend is not None and backend.is_available()
    if not available or (count is not None and device.index is not None and device.index >= count):
        have = f"{count} CUDA device(s)" if count else f"no {kind} device"
        raise ValueError(f"device={device}: this machine has {have} (torch {torch.__version__}); "
                         "use --set device=cpu, or run on a machine with that device")


def load_pipeline(model: str | Path = "tiny-shapes", device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, model_config_dir: str | Path | None = None
                  ) -> StableDiffusionPipeline | StableDiffusionXLPipeline | StableDiffusion3Pipeline | FluxPipeline:
    """Load the built-in ``tiny-shapes`` model, a local diffusers pipeline folder (SD 1.x/2.x, SDXL, SD 3, FLUX,
    pixel-space),
    or
    a single-file SD 1.x/2.x checkpoint (``.safetensors``/``.ckpt``) with ``model_config_dir`` naming a local
    diffusers folder of the same architecture.

    The scheduler is DDIM (with the checkpoint's own schedule config), the sampler the engine uses, except for the
    flow-matching families (SD 3, FLUX), which keep their own (``hero.models.flow`` samples its SDE).
    """
    require_device(device)
    if str(model) in BUILTIN:
        pipe = _load_tiny_shapes(shipped_model_dir())
    elif str(model).lower().endswith(SINGLE_FILE_SUFFIXES):
        pipe = _load_single_file(Path(model), model_config_dir)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    else:
        path = Path(model)
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(
                f"--model {model!r}: not a built-in model ({', '.join(BUILTIN)}) and not a diffusers pipeline "
                f"folder (no {path / 'model_index.json'}); nothing is downloaded at run time")
        index = json.loads((path / "model_index.json").read_text())
        family = index.get("_class_name")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"--model {model!r} is a {family} folder: hero trains SD 1.x/2.x "
                             "(StableDiffusionPipeline), SDXL (StableDiffusionXLPipeline), SD 3/3.5 "
                             "(StableDiffusion3Pipeline), FLUX.1 (FluxPipeline) and the built-in tiny-shapes")
        if FAMILIES.get(family) is not None:
            # A component the folder lists as null (e.g. SD 3 without its T5 encoder) is passed as None.
            absent = {k: None for k, v in index.items() if not k.startswith("_") and v in (None, [None, None])}
            pipe = FAMILIES[family].from_pretrained(path, **absent)
        elif index.get("vae") in (None, [None, None]):
            if not (path / "text_encoder").is_dir():  # a shipped-style folder: unet + scheduler only
                pipe = _load_tiny_shapes(path)
            else:
                pipe = PixelStableDiffusionPipeline.from_pretrained(path)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
        if not isinstance(pipe, FLOW_FAMILIES):
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe


def configure_memory(pipe, gradient_checkpointing: bool = False, attention: str = "sdpa") -> None:
    """Memory settings for training (``TrainConfig.memory``).

    ``attention="sdpa"`` keeps diffusers' default processor, which with torch 2 calls
    ``scaled_dot_product_attention`` (flash / memory-efficient kernels where the GPU has them); "xformers"
    switches to xformers' kernel and needs the package. ``gradient_checkpointing`` makes the UNet recompute its
    activations in the backward pass (diffusers, non-reentrant ``torch.utils.checkpoint``); it only acts while
    gradients are on, i.e. in the updates, and gives the same gradients.
    """
    if attention == "xformers":
        if importlib.util.find_spec("xformers") is None:
            raise ValueError("memory.attention=xformers: the xformers package is not installed (install it, or "
                             "keep memory.attention=sdpa, PyTorch's own fused attention)")
        pipe.enable_xformers_memory_efficient_attention()
    elif attention not in ("sdpa", "matmul"):  # matmul: the engine's calls switch it (hero.precision.autocast)
        raise ValueError(f"memory.attention={attention!r}: expected sdpa, matmul or xformers")
    if gradient_checkpointing:
        denoiser_for(pipe).network.enable_gradient_checkpointing()


def _load_single_file(path: Path, model_config_dir: str | Path | None) -> StableDiffusionPipeline:
    """An original-layout SD checkpoint file, its architecture (and tokenizer) from a local diffusers folder."""
    if not path.is_file():
        raise FileNotFoundError(f"--model {path}: no such checkpoint file")
    if model_config_dir is None:
        raise ValueError(f"--model {path} is a single-file checkpoint: set model_config_dir=<a local diffusers "
                         "folder of the same architecture (model_index.json, component configs, tokenizer/, "
                         "scheduler/)>; nothing is downloaded at run time")
    config = Path(model_config_dir)
    if not (config / "model_index.json").is_file():
        raise FileNotFoundError(f"model_config_dir {config}: not a diffusers pipeline folder (no "
                                f"{config / 'model_index.json'})")
    try:
        return StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                        safety_checker=None, requires_safety_checker=False)
    except (KeyError, RuntimeError, ValueError, SingleFileComponentError) as e:  # diffusers' words, on one line
        raise ValueError(f"cannot load {path} as an SD 1.x/2.x checkpoint with the architecture of {config}: "
                         f"{' '.join(str(e).split())}") from e


def _load_tiny_shapes(folder: Path) -> PixelStableDiffusionPipeline:
    if not (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        raise FileNotFoundError(f"tiny-shapes weights are missing from {folder} (run `hero pretrain-toy`)")
    tokenizer, text_encoder = load_text_encoder()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    scheduler = (DDIMScheduler.from_pretrained(folder / "scheduler") if (folder / "scheduler").is_dir()
                 else sampling_scheduler())
    return PixelStableDiffusionPipeline(vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                        scheduler=scheduler)
