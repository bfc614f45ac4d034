"""Checks shared by the short-run tests of every algorithm."""

import os
import shutil
import signal
import subprocess
import sys
import time

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
