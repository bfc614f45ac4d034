"""Seconds of sampling and of a policy update per attention kernel and precision, on the built-in model (CPU).

    .venv/bin/python benchmarks/attention_kernels.py [--threads 2] [--n 64] [--repeats 3]

Why it exists: on a CPU both of PyTorch's attention kernels are slow in bf16 (the fused one's backward, the math
one's forward): ``hero.precision.autocast`` runs the math kernel there by default and, with
``memory.attention=matmul``, attention as two matmuls and an fp32 softmax ("matmul"; docs/speed.md).

One JSON line per (precision, attention): the median over ``repeats`` rounds (the variants interleaved within each
round, so that a busy machine slows them alike) of sampling n images (20 DDIM steps, η = 1, guidance 2.0, one
batch) and of one policy update of those n trajectories × 5 steps, 8 per optimiser step. "math"/"fused" are
PyTorch's kernels; "upcast" runs the fused kernel in fp32 inside the bf16 autocast (a patched
``scaled_dot_product_attention``, for comparison only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hero.lora import add_lora
from hero.models import load_pipeline
from hero.models.families import denoiser_for
from hero.policy_gradient import make_optimizer, policy_gradient_update
from hero.precision import Precision
from hero.rollout import rollout
from hero.settings import PolicyGradientSettings

FUSED_SDPA = F.scaled_dot_product_attention
VARIANTS = (("fp32", "fused"), ("fp32", "math"), ("bf16", "matmul"), ("bf16", "fused"), ("bf16", "math"),
            ("bf16", "upcast"))


def _upcast_sdpa(q, k, v, *args, **kwargs):
    with torch.autocast("cpu", enabled=False):
        return FUSED_SDPA(q.float(), k.float(), v.float(), *args, **kwargs).to(q.dtype)


@contextlib.contextmanager
def kernel(name: str):
    """PyTorch's math kernel, its fused one, the fused one in fp32 ("upcast"), or the engine's matmuls ("matmul")."""
    if name == "math":
        with sdpa_kernel([SDPBackend.MATH]):
            yield
        return
    if name == "upcast":
        F.scaled_dot_product_attention = _upcast_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = FUSED_SDPA


def _variant_model(precision: str, name: str):
    attention = "matmul" if name == "matmul" else "pytorch"  # "pytorch": only ``kernel``'s choice applies
    model = denoiser_for(load_pipeline("tiny-shapes"), Precision.named(precision, attention))
    add_lora(model.network, rank=8, alpha=8)
    return model, make_optimizer(model.network, lr=3e-5)


def time_once(model, optimizer, name: str, n: int, seed: int) -> tuple[float, float]:
    """Seconds of one rollout of n images and of one policy update of its trajectories."""
    cfg = PolicyGradientSettings(batch_size=8, grad_accum=1, timesteps_per_traj=5, inner_epochs=1)
    with kernel(name):
        with torch.no_grad():
            t0 = time.perf_counter()
            traj = rollout(model, ["three green triangles"] * n, guidance_scale=2.0, num_steps=20, eta=1.0,
                           seed=seed, batch_size=n)
            sampling = time.perf_counter() - t0
        t0 = time.perf_counter()
        policy_gradient_update(model, traj, torch.linspace(0, 1, n), optimizer, cfg)
        return sampling, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {v: _variant_model(*v) for v in VARIANTS}
    for v, (model, optimizer) in models.items():
        time_once(model, optimizer, v[1], min(args.n, 8), seed=0)  # warm-up
    times: dict = {v: [] for v in VARIANTS}
    for r in range(args.repeats):
        for v, (model, optimizer) in models.items():
            times[v].append(time_once(model, optimizer, v[1], args.n, seed=r))
    for (precision, name), runs in times.items():
        print(json.dumps({"precision": precision, "attention": name, "n": args.n, "threads": args.threads,
                          "repeats": args.repeats, "sampling_s": round(statistics.median(s for s, _ in runs), 2),
                          "update_s": round(statistics.median(u for _, u in runs), 2)}), flush=True)


if __name__ == "__main__":
    main()
