"""Mixed precision of the engine's network calls: ``Precision``, the fp16 loss scale and ``unet_call``.

A ``Precision`` is a value, held by the trainer's ``Denoiser`` (``model.precision``) and passed to every network
call (``unet_call``); nothing is set globally.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from hero.runs.atomic import atomic_write_text

__all__ = ["FP32", "LossScale", "Precision", "autocast", "unet_call", "unet_output"]

_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
ATTENTION = ("auto", "matmul", "pytorch")


@dataclass
class LossScale:
    """Dynamic loss scaling for fp16 (``torch.amp.GradScaler``'s rule), applied at the UNet's boundary.

    Gradients entering a half-precision UNet call are multiplied by ``scale`` (so that small ones do not flush
    to zero in fp16) and those leaving it through its inputs are divided again; the LoRA gradients therefore
    arrive ``scale`` times too large, and ``policy_gradient.clip_and_step`` divides them before clipping. A
    non-finite gradient skips the optimiser step and halves the scale; ``growth_interval`` finite steps double it.
    """

    scale: float = 2.0**16
    growth_interval: int = 200
    good_steps: int = 0

    FILE = "loss_scale.json"  # in each checkpoint folder of an fp16 run, so --resume goes on at the same scale

    def save(self, folder: str | Path) -> None:
        atomic_write_text(Path(folder) / self.FILE, json.dumps({"scale": self.scale, "good_steps": self.good_steps}))

    def load(self, folder: str | Path) -> None:
        """Take the scale a checkpoint was written at (a checkpoint from before fp16 or this file: keep ours)."""
        path = Path(folder) / self.FILE
        if path.is_file():
            state = json.loads(path.read_text())
            self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale, self.good_steps = self.scale / 2, 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0


@dataclass(frozen=True)
class Precision:
    """How the engine runs its denoising network: in fp32, or under ``torch.autocast`` in bf16 or fp16.

    The trainer's ``Denoiser`` holds one (``hero.models.families.denoiser_for(pipe, precision)``), so the sampler,
    the log-prob re-evaluation and the likelihood losses all run the network the same way, and a call site shows
    it: ``model.precision``. Half precision: each forward runs under autocast and its output is cast back to fp32
    before the DDIM posterior, so log-probs, latents and ratios stay fp32; trainable LoRA parameters stay fp32
    (``hero.lora.add_lora``), their gradients too. fp16 also carries the dynamic loss scale (``scaler``) that
    ``policy_gradient.clip_and_step`` divides out; bf16 has fp32's exponent range and needs none.
    """

    dtype: torch.dtype | None = None  # the autocast dtype; None: fp32, no autocast
    scaler: LossScale | None = None  # fp16 only
    # How attention runs (``autocast``): "auto" (PyTorch's kernels; its math kernel for bf16 on a CPU), "matmul"
    # (two matmuls and an fp32 softmax: ``memory.attention=matmul``), "pytorch" (PyTorch's own choice, always).
    attention: str = "auto"

    @classmethod
    def named(cls, name: str | None, attention: str = "auto") -> Precision:
        """"fp32" (or None), "bf16" or "fp16" -> its Precision; fp16 gets a fresh loss scale."""
        if name not in (None, "fp32", *_HALF):
            raise ValueError(f"precision={name!r}: expected one of fp32, bf16, fp16")
        if attention not in ATTENTION:
            raise ValueError(f"attention={attention!r}: expected one of {', '.join(ATTENTION)}")
        return cls(_HALF.get(name), LossScale() if name == "fp16" else None, attention)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


FP32 = Precision()


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _ScaleGrad.apply(x, factor) if torch.is_grad_enabled() and x.requires_grad else x


class _MatmulAttention(TorchFunctionMode):
    """Runs ``F.scaled_dot_product_attention`` inside it as softmax(QKᵀ · scale) V: two matmuls and an fp32
    softmax, differentiated by autograd.

    Why: on a CPU in bf16 both of PyTorch's kernels are slow. The fused (flash) kernel's backward is 5x slower
    than fp32's, and the math kernel's forward pays for its masked-row checks (``aten::all``/``where``/``isneginf``):
    sampling 64 images on the built-in model took 8.1 s with this against 11.0 s with the math kernel
    (``benchmarks/attention_kernels.py``, docs/speed.md). Calls it cannot serve as written (dropout, causal,
    grouped-query) go to PyTorch's own kernel.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return _matmul_attention(*args, **kwargs)
        return func(*args, **kwargs)


def _matmul_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                      scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    if dropout_p > 0 or is_causal or enable_gqa:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    # In slices of the batch whose scores fit in a core's cache (2^20 floats): a whole batch's scores do not, and
    # its softmax then runs at memory speed (128 × 16 heads × 64 × 64 tokens, bf16: 64 ms in one piece, 7 ms sliced).
    per_item = query[0].numel() // query.shape[-1] * key.shape[-2]
    rows = max(1, _SCORES_PER_SLICE // max(per_item, 1))
    out = []
    for i in range(0, query.shape[0], rows):
        scores = (query[i: i + rows] @ key[i: i + rows].transpose(-2, -1)).float() * scale
        if attn_mask is not None:
            mask = attn_mask[i: i + rows] if attn_mask.shape[0] == query.shape[0] else attn_mask
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        out.append(scores.softmax(-1).to(value.dtype) @ value[i: i + rows])
    return out[0] if len(out) == 1 else torch.cat(out)


_SCORES_PER_SLICE = 2**20


def autocast(device_type: str, dtype: torch.dtype | None, attention: str = "auto") -> contextlib.ExitStack:
    """``torch.autocast`` to ``dtype`` (None: none, fp32) with the attention ``Precision.attention`` names.

    "auto": for bf16 on a CPU, PyTorch's math kernel, whose backward is 5x faster there than the fused kernel's
    (docs/speed.md); "matmul": ``_MatmulAttention`` (faster again, opt-in: ``memory.attention=matmul``);
    "pytorch": whatever PyTorch picks. The same attention must run in every call of a run, with or without
    gradients, so that a rollout's log-probs re-evaluate to a ratio of exactly 1: ``unet_call`` asks for "pytorch"
    for a network with gradient checkpointing, whose backward recomputes the forward outside this context.
    """
    stack = contextlib.ExitStack()
    if dtype is not None:
        stack.enter_context(torch.autocast(device_type, dtype=dtype))
    if attention == "matmul":
        stack.enter_context(_MatmulAttention())
    elif attention == "auto" and device_type == "cpu" and dtype == torch.bfloat16:
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack


def unet_call(unet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
              precision: Precision = FP32) -> torch.Tensor:
    """unet(x, t, context).sample in fp32, run at ``precision``: every engine call of a denoising network."""
    half, scaler = precision.dtype, precision.scaler
    if scaler is not None:  # gradients leave through the inputs unscaled again
        x, context = _scale_grad(x, 1.0 / scaler.scale), _scale_grad(context, 1.0 / scaler.scale)
    attention = "pytorch" if getattr(unet, "is_gradient_checkpointing", False) else precision.attention
    with autocast(x.device.type, half, attention):
        out = unet(x.to(unet.dtype), t, encoder_hidden_states=context.to(unet.dtype)).sample.float()
    return out if scaler is None else _scale_grad(out, scaler.scale)


def unet_output(unet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                precision: Precision = FP32) -> torch.Tensor:
    """One unguided UNet prediction (fp32) at per-sample timesteps t (B,), run at ``precision``: for the likelihood
    updates (``hero.likelihood``), which train on single predictions, and each half of a guided one."""
    out = unet_call(unet, x, t, context, precision)
    return out[:, : x.shape[1]] if out.shape[1] == 2 * x.shape[1] else out  # learned variance: keep the mean
