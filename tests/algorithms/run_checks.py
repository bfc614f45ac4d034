"""Checks shared by the short-run tests of every algorithm."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from hero.models import load_pipeline
from hero.train import train


def assert_lora_loads(run) -> None:
    """The run's final LoRA loads into a fresh tiny-shapes pipeline with pipe.load_lora_weights."""
    pipe = load_pipeline("tiny-shapes")
    pipe.load_lora_weights(str(run.path / "lora"))
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())


def assert_resume_reproduces_lora(run, cfg, source) -> None:
    """With every round judged and no checkpoint left, a resumed run learns from the *logged* feedback (asking
    ``source`` nothing) and ends with the same LoRA."""
    final = load_file(run.path / "lora" / "pytorch_lora_weights.safetensors")
    shutil.rmtree(run.path / "checkpoints")  # no checkpoint left: every round is learned again, from the log
    train(cfg, resume=True, source=source, show_progress=False)
    again = load_file(run.path / "lora" / "pytorch_lora_weights.safetensors")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)


def kill_resume_and_compare(cmd: list[str], out, whole) -> None:
    """Run ``hero train`` (``cmd``: its arguments, ``--out out`` among them), SIGKILL it once its first round is
    learned (somewhere in sampling, judging or learning the next), ``--resume`` it, and check that it ends with
    the LoRA of the uninterrupted run ``whole``, to the bit."""
    cmd = [sys.executable, "-m", "hero.cli", "train", *cmd, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "latest").is_file() and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = subprocess.run(cmd[:4] + ["--resume", str(out), "--no-progress"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    final, again = (load_file(p / "lora" / "pytorch_lora_weights.safetensors") for p in (whole.path, out))
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)


def assert_one_pass_is_the_same_update(unet, update) -> None:
    """``update(batch_timesteps)`` (it returns the update's stats) takes the same optimiser steps, to float
    rounding, with each step's minibatches × K timesteps in one network pass as with one pass per term."""
    # A fresh LoRA's B = 0 makes ∂L/∂A exactly 0 in theory and float rounding in practice, which AdamW turns into
    # a full step of either sign: start from a moved adapter, whose every gradient is a real one.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    start = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    after, stats = {}, {}
    for fused in (False, True):
        unet.load_state_dict(start, strict=False)
        stats[fused] = update(fused)
        after[fused] = {n: p.detach().clone() for n, p in unet.named_parameters() if n in start}
    assert stats[False]["backward_passes"] == stats[True]["backward_passes"] == stats[False]["network_passes"] > 1
    assert stats[True]["network_passes"] == stats[True]["grad_steps"]
    assert stats[True]["loss"] == pytest.approx(stats[False]["loss"], rel=1e-5)
    assert any(not torch.equal(after[False][n], start[n]) for n in start)
    for n in start:
        torch.testing.assert_close(after[True][n], after[False][n], rtol=1e-4, atol=1e-6)
