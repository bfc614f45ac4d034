"""Pretrain the built-in tiny-shapes model on the toy world (``hero pretrain-toy``).

Plain diffusion training, written out: draw a batch of toy scenes and captions, noise them at random
timesteps, predict v, weight the loss by min-SNR-5, AdamW at a constant rate after warm-up, EMA of the
weights. Seeded and step-counted, so ``--steps N`` reproduces the checkpoint saved at step N of a longer
run. Every ``save_every`` steps the EMA weights are saved as a loadable model folder with a sample grid.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from hero.models.families import denoiser_for
from hero.models.pixel_pipeline import PixelStableDiffusionPipeline
from hero.models.tiny_shapes import build_unet, load_text_encoder, sampling_scheduler, training_scheduler
from hero.runs.atomic import atomic_torch_save
from hero.toyworld.scenes import image_grid, training_example


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"
    steps: int = 8000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 300
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # empty prompt, so classifier-free guidance works
    min_snr_gamma: float = 5.0
    save_every: int = 500
    sample_grid: bool = True  # save a 4×8 sample grid with every checkpoint
    seed: int = 0
    threads: int = 2


class CaptionEmbeddings:
    """Frozen text-encoder outputs, cached per caption (the toy vocabulary is small)."""

    def __init__(self, pipe: PixelStableDiffusionPipeline):
        self.pipe = pipe
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            embeds = denoiser_for(self.pipe).encode(missing)[0]
            self.cache.update(zip(missing, embeds, strict=False))
        return torch.stack([self.cache[c] for c in captions])


def batch(rng: np.random.Generator, size: int, dropout: float) -> tuple[torch.Tensor, list[str]]:
    images, captions = zip(*(training_example(rng) for _ in range(size)), strict=False)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    captions = ["" if rng.random() < dropout else c for c in captions]
    return x, captions


def save_model(pipe: PixelStableDiffusionPipeline, ema: EMAModel, folder: Path, step: int, grid: bool = True) -> None:
    """Save the EMA weights as unet/ + scheduler/ (the shipped layout) and a 4×8 sample grid."""
    unet = pipe.unet
    backup = [p.detach().clone() for p in unet.parameters()]
    ema.copy_to(unet.parameters())
    unet.save_pretrained(folder / "unet")
    pipe.scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixelStableDiffusionPipeline", "step": step,
                                                         "vae": [None, None]}, indent=1))
    if grid:
        _sample_grid(pipe, folder / "samples.png")
    with torch.no_grad():
        for p, b in zip(unet.parameters(), backup, strict=False):
            p.copy_(b)


def _sample_grid(pipe: PixelStableDiffusionPipeline, path: Path) -> None:
    prompts = ["two red squares", "three green triangles", "four blue circles", "one yellow circle on black"]
    g = torch.Generator().manual_seed(0)
    pipe.unet.eval()
    imgs = pipe([p for p in prompts for _ in range(8)], num_inference_steps=20, eta=1.0, guidance_scale=2.0,
                generator=g, output_type="np", height=32, width=32).images
    image_grid((imgs * 255).round().astype(np.uint8), ncols=8).save(path)
    pipe.unet.train()


def _denoising_loss(unet, noise_sched, x0: torch.Tensor, cond: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
    """v-prediction loss at uniformly drawn timesteps, min-SNR weighted."""
    noise = torch.randn_like(x0)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (x0.shape[0],))
    xt = noise_sched.add_noise(x0, noise, t)
    target = noise_sched.get_velocity(x0, noise, t)
    pred = unet(xt, t, cond).sample
    alphas = noise_sched.alphas_cumprod
    snr = alphas[t] / (1 - alphas[t])
    weight = torch.clamp(snr, max=min_snr_gamma) / (snr + 1)  # min-SNR-gamma, divided by (snr + 1) for v-targets
    return (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()


def _save_state(path: Path, unet, opt, sched, ema, rng: np.random.Generator, step: int) -> None:
    """Everything a resumed pretraining needs to continue bit-for-bit; written atomically."""
    state = {"unet": unet.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "ema": ema.state_dict(), "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
             "step": step}
    atomic_torch_save(state, path)


def _load_state(path: Path, unet, opt, sched, ema, rng: np.random.Generator) -> int:
    """Restore what ``_save_state`` wrote; return the step to continue from."""
    state = torch.load(path, weights_only=False)
    unet.load_state_dict(state["unet"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    ema.load_state_dict(state["ema"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    return state["step"]


def pretrain(cfg: PretrainConfig) -> Path:
    """Train tiny-shapes from scratch (or resume from ``out/last.pt``); return the output folder."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    tokenizer, text_encoder = load_text_encoder()
    unet = build_unet()
    pipe = PixelStableDiffusionPipeline(None, text_encoder, tokenizer, unet, sampling_scheduler())
    pipe.set_progress_bar_config(disable=True)
    noise_sched = training_scheduler()
    embed = CaptionEmbeddings(pipe)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=0.75)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    if (out / "last.pt").is_file():  # resume: weights, optimiser, EMA and both RNGs
        step = _load_state(out / "last.pt", unet, opt, sched, ema, rng)
    unet.train()
    log = (out / "log.jsonl").open("a")
    t0, losses = time.time(), []
    while step < cfg.steps:
        x0, captions = batch(rng, cfg.batch_size, cfg.caption_dropout)
        loss = _denoising_loss(unet, noise_sched, x0, embed(captions), cfg.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(unet.parameters())
        step += 1
        losses.append(loss.item())
        if step % 100 == 0:
            rec = {"step": step, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
            losses = []
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_model(pipe, ema, out / f"checkpoint-{step}", step, cfg.sample_grid)
            _save_state(out / "last.pt", unet, opt, sched, ema, rng, step)
    return out / f"checkpoint-{cfg.steps}"


if __name__ == "__main__":  # python -m hero.pretrain --steps N --out DIR
    import argparse

    ap = argparse.ArgumentParser()
    for k, v in asdict(PretrainConfig()).items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    print(pretrain(PretrainConfig(**vars(ap.parse_args()))))
