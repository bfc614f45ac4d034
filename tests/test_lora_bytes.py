"""The same LoRA weights give the same file bytes, in any process: a checksum of a saved LoRA means something."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from hero.lora import add_lora, save_lora

FILE = "pytorch_lora_weights.safetensors"
TESTS = Path(__file__).parent

# Builds the tiny pipeline, attaches a seeded LoRA and saves it; prints the file's sha256.
SCRIPT = f"""
import hashlib, sys, torch
sys.path.insert(0, {str(TESTS)!r})
from conftest import build_tiny_pixel_pipeline
from hero.lora import add_lora, save_lora
pipe = build_tiny_pixel_pipeline(0)
torch.manual_seed(1)
add_lora(pipe.unet, rank=2, alpha=4)
out = save_lora(pipe, sys.argv[1])
print(hashlib.sha256((out / {FILE!r}).read_bytes()).hexdigest())
"""


def _saved(factory, targets, directory: Path) -> bytes:
    pipe = factory(0)
    torch.manual_seed(1)
    add_lora(pipe.unet, rank=2, alpha=4, targets=targets)
    return (save_lora(pipe, directory) / FILE).read_bytes()


def test_the_metadata_lists_are_sorted_and_two_saves_are_byte_equal(tiny_pixel_pipeline_factory, tmp_path):
    a = _saved(tiny_pixel_pipeline_factory, ("to_q", "to_k", "to_v", "to_out.0"), tmp_path / "a")
    b = _saved(tiny_pixel_pipeline_factory, ("to_out.0", "to_v", "to_k", "to_q"), tmp_path / "b")
    assert a == b
    n = int.from_bytes(a[:8], "little")
    meta = json.loads(a[8:8 + n])["__metadata__"]  # as written (safe_open hands it back in a random order)
    assert list(meta) == sorted(meta)
    with safe_open(tmp_path / "a" / FILE, "pt") as f:
        assert f.metadata() == meta  # the rewritten header still reads
    adapter = json.loads(meta["lora_adapter_metadata"])
    assert adapter["unet.target_modules"] == sorted(["to_q", "to_k", "to_v", "to_out.0"])
    assert adapter["unet.lora_alpha"] == 4  # the metadata is still what diffusers reads back


def test_processes_with_different_hash_seeds_write_the_same_bytes(tmp_path):
    digests = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / seed)], env=env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        digests.append(res.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1]
    assert digests[0] == hashlib.sha256((tmp_path / "1" / FILE).read_bytes()).hexdigest()
