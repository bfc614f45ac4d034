"""Seconds of sampling and of a policy update per attention kernel and precision, on the built-in model (CPU).

    .venv/bin/python benchmarks/attention_kernels.py [--threads 1] [--n 32]

Why it exists: on a CPU the fused (flash) attention kernel's backward in bf16 is several times slower than in fp32,
which made bf16 policy updates slower than fp32 ones; ``hero.precision.autocast`` therefore runs the math kernel
for bf16 on a CPU (docs/speed.md). One JSON line per (precision, kernel): sampling n images (20 DDIM steps, η = 1,
guidance 2.0) and one policy update of those n trajectories × 5 steps, 8 per optimiser step, after a warm-up each.
"upcast" runs the attention itself in fp32 inside the bf16 autocast (a patched ``scaled_dot_product_attention``,
for comparison only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import hero.precision
from hero.lora import add_lora
from hero.models import load_pipeline
from hero.models.families import denoiser_for
from hero.models.loading import weight_dtype
from hero.policy_gradient import make_optimizer, policy_gradient_update
from hero.precision import Precision
from hero.rollout import rollout
from hero.settings import PolicyGradientSettings

FUSED_SDPA = F.scaled_dot_product_attention


def _upcast_sdpa(q, k, v, *args, **kwargs):
    with torch.autocast("cpu", enabled=False):
        return FUSED_SDPA(q.float(), k.float(), v.float(), *args, **kwargs).to(q.dtype)


@contextlib.contextmanager
def kernel(name: str):
    """The math kernel, the fused one, or the fused one in fp32 ("upcast"). For the last two the engine's own
    choice (the math kernel for bf16 on a CPU, in ``hero.precision.autocast``) is switched off while timing."""
    if name == "math":
        with sdpa_kernel([SDPBackend.MATH]):
            yield
        return
    engine_choice = hero.precision.sdpa_kernel
    hero.precision.sdpa_kernel = lambda backends: contextlib.nullcontext()
    if name == "upcast":
        F.scaled_dot_product_attention = _upcast_sdpa
    try:
        yield
    finally:
        hero.precision.sdpa_kernel, F.scaled_dot_product_attention = engine_choice, FUSED_SDPA


def time_variant(precision: str, name: str, n: int) -> dict:
    # Precision.named("fp32") is no autocast, so the kernel set here is the one every call uses.
    pipe = load_pipeline("tiny-shapes", dtype=weight_dtype(precision))
    model = denoiser_for(pipe, Precision.named(precision))
    prompts = ["three green triangles"] * n
    with kernel(name), torch.no_grad():
        rollout(model, prompts[:4], guidance_scale=2.0, num_steps=2, eta=1.0, seed=0, batch_size=n)
        t0 = time.perf_counter()
        traj = rollout(model, prompts, guidance_scale=2.0, num_steps=20, eta=1.0, seed=0, batch_size=n)
        sampling = time.perf_counter() - t0
    add_lora(model.network, rank=8, alpha=8)
    cfg = PolicyGradientSettings(batch_size=8, grad_accum=1, timesteps_per_traj=5, inner_epochs=1)
    optimizer = make_optimizer(model.network, lr=3e-5)
    rewards = torch.linspace(0, 1, n)
    with kernel(name):
        policy_gradient_update(model, traj, rewards, optimizer, cfg)  # warm-up
        t0 = time.perf_counter()
        policy_gradient_update(model, traj, rewards, optimizer, cfg)
        update = time.perf_counter() - t0
    return {"precision": precision, "attention": name, "n": n, "threads": torch.get_num_threads(),
            "sampling_s": round(sampling, 2), "update_s": round(update, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for precision, name in (("fp32", "fused"), ("fp32", "math"), ("bf16", "fused"), ("bf16", "math"),
                            ("bf16", "upcast")):
        print(json.dumps(time_variant(precision, name, args.n)), flush=True)


if __name__ == "__main__":
    main()
