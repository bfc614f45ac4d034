"""Milliseconds per image of one UNet forward on this machine, per precision: is bf16 native here?

    .venv/bin/python benchmarks/unet_forward_speed.py [--model tiny-shapes] [--batch 32] [--repeats 5]

One JSON line per variant (fp32, fp32 with channels_last, bf16 autocast), median over the repeats after a
warm-up, with what ``precision: auto`` picks on this machine. A CPU without avx512_bf16/AMX emulates bf16, so
the bf16 line shows whether "auto" is right to keep fp32 there (docs/speed.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from hero.models import load_pipeline
from hero.models.loading import cpu_has_native_bf16, resolve_precision


def forward_ms(unet, x: torch.Tensor, cond: torch.Tensor, repeats: int, context) -> float:
    """Median ms per image of ``unet(x, t, cond)`` under ``context`` (a fresh context per call)."""
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            t = torch.randint(1000, (len(x),), generator=torch.Generator().manual_seed(i))
            t0 = time.perf_counter()
            with context():
                unet(x, t, encoder_hidden_states=cond)
            if i:  # the first call warms up
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / len(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-shapes")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pipe = load_pipeline(args.model)
    unet = pipe.unet
    cond = pipe.encode_prompt(["three green triangles"], "cpu", 1, False)[0].repeat(args.batch, 1, 1)
    size = unet.config.sample_size
    x = torch.randn(args.batch, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    common = {"model": args.model, "batch": args.batch, "threads": torch.get_num_threads(),
              "native_bf16": cpu_has_native_bf16(), "auto_picks": resolve_precision("auto", "cpu")}
    print(json.dumps({**common, "variant": "fp32",
                      "ms_per_image": round(forward_ms(unet, x, cond, args.repeats, contextlib.nullcontext), 2)}))
    unet.to(memory_format=torch.channels_last)
    print(json.dumps({**common, "variant": "fp32 channels_last",
                      "ms_per_image": round(forward_ms(unet, x, cond, args.repeats, contextlib.nullcontext), 2)}))
    unet.to(memory_format=torch.contiguous_format)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    print(json.dumps({**common, "variant": "bf16 autocast",
                      "ms_per_image": round(forward_ms(unet, x, cond, args.repeats, bf16), 2)}))


if __name__ == "__main__":
    main()
