"""Checks shared by the short-run tests of every algorithm."""

import shutil

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
