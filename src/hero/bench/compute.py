"""`hero bench compute`: how fast the engine runs, next to the stock diffusers pipeline.

Per setting it measures (median of ``repeats`` timings after a warm-up):
- **rollout images/s**: ``hero.rollout.rollout`` (DDIM η = 1, classifier-free guidance, every latent and per-step
  log-prob recorded) against **pipeline images/s**: the plain ``pipe(...)`` call at the same steps, η, guidance,
  batch and size (``hero.sampling.sample_images``), so the ratio is the price of recording trajectories;
- **update steps/s**: optimiser steps of ``policy_gradient_update`` (LoRA on the UNet; each step = a minibatch of
  trajectories × K timesteps, forward and backward), and trajectory-timesteps per second; the same update with a
  minibatch's K timesteps in one pass (``pg.batch_timesteps``, **batched**), on the conditional half only
  (``pg.sampled_uncond``, **half**) and with both;
- **likelihood steps/s**: optimiser steps of ``hero.likelihood.likelihood_update`` (RAFT's, Diffusion-KTO's: the
  denoising loss with the base model's prediction, batch 2 × the update's), and images/s;
- **a round's seconds** (``round_seconds``): the demo's round of 64 images priced from those rates, sampling, its
  policy update and the likelihood methods' 300 steps, with each update's share of the round;
- with ``compiled``, **compiled rollout images/s**: the same rollout through ``torch.compile`` (``sampler.compile``),
  its speed-up and the one-off compile's seconds;
- **FLOPs**, counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions): a UNet step is
  the difference between rollouts of 2 and 1 steps (text encoding and decoding cancel), the rollout's total adds
  them back; the update's are counted over one whole update. The achieved rate divides them by the timings; on
  a GPU whose bf16 dense peak is in ``PEAK_BF16_TFLOPS`` it is also given as a fraction of that peak.

Settings: the built-in tiny-shapes model (always, on CPU) and, when a GPU is present (or ``--sd15``), the SD 1.5
architecture at 512×512 built from configs with random weights (timing does not need trained weights), in bf16;
with ``--sdxl`` also the SDXL base architecture at 1024×1024 (UNet 2.6 B parameters, CLIP-L and OpenCLIP-bigG
text encoders), with ``--sd35`` SD 3.5 Medium's (MMDiT-X, 2.2 B parameters in the transformer; without T5) and
with ``--flux`` FLUX.1-dev's (11.9 B; its T5 cut to 2 layers), the same way.
"""

from __future__ import annotations

import re
import statistics
import string
import time
from collections.abc import Callable

import torch

from hero.config import load_config

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets, matched on the device name (the
# first pattern that matches wins). An unknown GPU gets no fraction.
PEAK_BF16_TFLOPS = ((r"H100.*PCIE", 756.0), (r"H100.*NVL", 835.0), (r"H100|H200", 989.4), (r"A100", 312.0),
                    (r"L40S", 362.0), (r"\bL4\b", 121.0))

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
# SDXL base 1.0's architecture (its published component configs), 1024 px.
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT_2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
# SD 3.5 Medium's architecture, 1024 px (MMDiT-X: dual attention in its first 13 blocks); timed without T5-XXL
# (the pipeline then feeds zeros for its tokens), which changes the text encoding, not the transformer's work.
SD35M_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                         attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                         caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
SD35_VAE = {**SD15_VAE, "sample_size": 1024, "latent_channels": 16, "scaling_factor": 1.5305,
            "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False}
# FLUX.1-dev's architecture (11.9 B parameters in the transformer), 1024 px; its T5-XXL cut to 2 of 24 layers
# (the text encoding is a sliver of a round; the embedding width the transformer reads is the real one).
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_VAE = {**SD35_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
FLUX_T5 = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64,
               feed_forward_proj="gated-gelu", is_gated_act=True, pad_token_id=0, eos_token_id=1)
PROMPT = "three green triangles"


def peak_tflops(device_name: str) -> float | None:
    """The bf16 dense peak of a GPU by name (e.g. "NVIDIA H100 80GB HBM3" -> 989.4), None when unknown."""
    return next((t for pattern, t in PEAK_BF16_TFLOPS if re.search(pattern, device_name.upper())), None)


def _character_tokenizer(max_length: int):
    """A CLIP tokenizer over single characters (no merges), built locally: enough to time any prompt."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits:
        vocab.update({ch: len(vocab), ch + "</w>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _ddim_sd() -> object:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def build_sd_pipeline(unet: dict = SD15_UNET, vae: dict = SD15_VAE, text: dict = SD15_TEXT):
    """A StableDiffusionPipeline of the given architecture with random weights and a local character tokenizer."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _character_tokenizer(text["max_position_embeddings"])
    encoder = CLIPTextModel(CLIPTextConfig(**text, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**vae).eval(), text_encoder=encoder.requires_grad_(False),
                                   tokenizer=tokenizer, unet=UNet2DConditionModel(**unet), scheduler=_ddim_sd(),
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    pipe.vae.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sdxl_pipeline(unet: dict = SDXL_UNET, vae: dict = SDXL_VAE, text: dict = SD15_TEXT,
                        text_2: dict = SDXL_TEXT_2, device: str = "cpu"):
    """A StableDiffusionXLPipeline of the given architecture with random weights, built directly on ``device``
    (SDXL's UNet is 10 GB in fp32), and local character tokenizers."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.device(device):
        encoder = CLIPTextModel(CLIPTextConfig(**text, **ids)).eval().requires_grad_(False)
        encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_2, **ids)).eval().requires_grad_(False)
        pipe = StableDiffusionXLPipeline(vae=AutoencoderKL(**vae).eval().requires_grad_(False), text_encoder=encoder,
                                         text_encoder_2=encoder_2,
                                         tokenizer=_character_tokenizer(text["max_position_embeddings"]),
                                         tokenizer_2=_character_tokenizer(text_2["max_position_embeddings"]),
                                         unet=UNet2DConditionModel(**unet), scheduler=_ddim_sd(),
                                         add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sd3_pipeline(transformer: dict = SD35M_TRANSFORMER, vae: dict = SD35_VAE, text: dict = SD15_TEXT,
                       text_2: dict = SDXL_TEXT_2, device: str = "cpu"):
    """A StableDiffusion3Pipeline of the given architecture with random weights and no T5, built on ``device``."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    first = {**text, "projection_dim": text.get("projection_dim", text["hidden_size"])}
    with torch.device(device):
        encoders = [CLIPTextModelWithProjection(CLIPTextConfig(**cfg, **ids)).eval().requires_grad_(False)
                    for cfg in (first, text_2)]
        pipe = StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**transformer), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=AutoencoderKL(**vae).eval().requires_grad_(False), text_encoder=encoders[0],
            tokenizer=_character_tokenizer(text["max_position_embeddings"]), text_encoder_2=encoders[1],
            tokenizer_2=_character_tokenizer(text_2["max_position_embeddings"]), text_encoder_3=None,
            tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux_pipeline(transformer: dict = FLUX_TRANSFORMER, vae: dict = FLUX_VAE, text: dict = SD15_TEXT,
                        t5: dict = FLUX_T5, device: str = "cpu"):
    """A FluxPipeline of the given architecture with random weights, built on ``device``; the T5 tokenizer is the
    local character tokenizer (the pipeline only calls it)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device(device):
        clip = CLIPTextModel(CLIPTextConfig(**text, bos_token_id=0, eos_token_id=1, pad_token_id=1))
        encoder = T5EncoderModel(T5Config(**t5))
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                    max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
        pipe = FluxPipeline(transformer=FluxTransformer2DModel(**transformer), scheduler=scheduler,
                            vae=AutoencoderKL(**vae).eval().requires_grad_(False),
                            text_encoder=clip.eval().requires_grad_(False),
                            tokenizer=_character_tokenizer(text["max_position_embeddings"]),
                            text_encoder_2=encoder.eval().requires_grad_(False),
                            tokenizer_2=_character_tokenizer(512))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _timed(fn: Callable[[int], object], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for r in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn(r)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _sampling(model, n: int, steps: int, guidance: float, batch: int, repeats: int, sync,
              compiled: bool = False) -> dict:
    from hero.rollout import rollout
    from hero.sampling import sample_images

    pipe, precision = model.pipe, model.precision.name

    def roll(k: int, num_steps: int, seed: int = 0, compile: bool = False, keep_uncond: bool = False):
        return rollout(model, [PROMPT] * k, guidance_scale=guidance, num_steps=num_steps, eta=1.0, seed=seed,
                       batch_size=batch, compile=compile, keep_uncond=keep_uncond)

    b = min(n, batch)
    one, two = _flops(lambda: roll(b, 1)), _flops(lambda: roll(b, 2))  # also the warm-up
    step_flops = (two - one) / b  # one UNet step (both CFG halves) per image
    image_flops = one / b + (steps - 1) * step_flops  # the whole rollout per image, text encoding and decoding too
    sample_images(pipe, PROMPT, b, steps=2, guidance_scale=guidance, batch_size=batch, precision=precision)  # warm-up
    t_roll = _timed(lambda r: roll(n, steps, seed=r), repeats, sync)
    t_pipe = _timed(lambda r: sample_images(pipe, PROMPT, n, seed=r, steps=steps, guidance_scale=guidance,
                                            batch_size=batch, precision=precision), repeats, sync)
    row = {"rollout_images_per_s": n / t_roll, "pipeline_images_per_s": n / t_pipe,
           "rollout_relative_speed": t_pipe / t_roll, "unet_gflop_per_image_step": step_flops / 1e9,
           "rollout_tflops_per_s": image_flops * n / t_roll / 1e12,
           "pipeline_tflops_per_s": image_flops * n / t_pipe / 1e12}
    if compiled:  # the first compiled rollout compiles (its time, less a timed one, is the compile's cost)
        t_first = _timed(lambda r: roll(n, steps, compile=True), 1, sync)
        t_compiled = _timed(lambda r: roll(n, steps, seed=r, compile=True), repeats, sync)
        row.update(compiled_rollout_images_per_s=n / t_compiled, compiled_speedup=t_roll / t_compiled,
                   compile_seconds=max(t_first - t_compiled, 0.0))
    return {**row, "traj": roll(n, steps, keep_uncond=True)}  # the update is also timed on the conditional half


def _update(model, traj, batch: int, k: int, repeats: int, sync) -> dict:
    from hero.lora import add_lora
    from hero.policy_gradient import make_optimizer, policy_gradient_update
    from hero.settings import PolicyGradientSettings

    network = model.network
    add_lora(network, rank=8, alpha=8)
    cfg = PolicyGradientSettings(batch_size=batch, grad_accum=1, timesteps_per_traj=k, inner_epochs=1)
    optimizer = make_optimizer(network, lr=3e-4)
    rewards = torch.linspace(0, 1, len(traj))
    stats: dict = {}
    flops = _flops(lambda: stats.update(policy_gradient_update(model, traj, rewards, optimizer, cfg)))  # warm-up
    seconds = _timed(lambda r: policy_gradient_update(model, traj, rewards, optimizer, cfg), repeats, sync)
    row = {"update_steps_per_s": stats["grad_steps"] / seconds,
           "update_trajectory_steps_per_s": stats["backward_passes"] * batch / seconds,
           "update_tflops_per_s": flops / seconds / 1e12, "update_batch": batch, "update_timesteps": k}
    # The same update with pg.batch_timesteps (K timesteps in one pass), pg.sampled_uncond (the conditional half
    # only, the unconditional one from the rollout) and both.
    for name, update in (("batched", {"batch_timesteps": True}), ("half", {"sampled_uncond": True}),
                         ("batched_half", {"batch_timesteps": True, "sampled_uncond": True})):
        variant = cfg.model_copy(update=update)
        t = _timed(lambda r, v=variant: policy_gradient_update(model, traj, rewards, optimizer, v), repeats, sync)
        row[f"update_{name}_steps_per_s"] = stats["grad_steps"] / t
    return row


def _likelihood(model, traj, batch: int, steps: int, repeats: int, sync) -> dict:
    """Optimiser steps of the likelihood methods' update (``hero.likelihood``: the denoising loss on judged images
    with the pull to the base model, three network passes a step), on the rollout's images."""
    from hero.likelihood import ImagePool, LikelihoodConfig, likelihood_update
    from hero.policy_gradient import make_optimizer

    pool = ImagePool()
    pool.add_round(traj, [True] * len(traj), None)
    cfg = LikelihoodConfig(steps=steps, batch_size=batch)
    optimizer = make_optimizer(model.network, lr=1e-3)

    def run(r: int) -> None:
        likelihood_update(model, pool, torch.arange(len(pool)), optimizer, cfg,
                          lambda errors, labels: (errors.model + errors.to_base).mean(),
                          torch.Generator("cpu").manual_seed(r))

    flops = _flops(lambda: run(0))  # also the warm-up
    seconds = _timed(run, repeats, sync)
    return {"likelihood_steps_per_s": steps / seconds, "likelihood_images_per_s": steps * batch / seconds,
            "likelihood_tflops_per_s": flops / seconds / 1e12, "likelihood_batch": batch}


# The round that ``round_seconds`` prices: the demo's (64 images; its policy update as ``presets/demo.yaml`` sets
# it) and the likelihood methods' default 300 steps (``settings.LikelihoodSettings``).
ROUND_IMAGES, ROUND_LIKELIHOOD_STEPS = 64, 300


def demo_policy_update() -> tuple[int, int]:
    """The demo preset's policy update of a 64-image round: (optimiser steps, timesteps per trajectory)."""
    pg = load_config("demo").pg
    return pg.inner_epochs * -(-ROUND_IMAGES // (pg.batch_size * pg.grad_accum)), pg.timesteps_per_traj


def round_seconds(row: dict) -> dict:
    """A round's seconds of sampling, of a policy update and of a likelihood update, from a row's rates, and each
    update's share of its round (update / (sampling + update)); the policy update also batched, on the conditional
    half only and both (``_update``) where the row has their rates.

    The update was timed at ``row["update_timesteps"]`` timesteps per trajectory; the demo's steps are priced
    in proportion to its own (a pass per trajectory-timestep: the update is compute-bound, docs/speed.md).
    """
    sampling = ROUND_IMAGES / row["rollout_images_per_s"]
    steps, k = demo_policy_update()
    pg = steps / row["update_steps_per_s"] * k / row["update_timesteps"]
    likelihood = ROUND_LIKELIHOOD_STEPS / row["likelihood_steps_per_s"]
    out = {"round_sampling_s": sampling, "round_pg_update_s": pg, "round_likelihood_update_s": likelihood,
           "pg_update_share": pg / (sampling + pg), "likelihood_update_share": likelihood / (sampling + likelihood)}
    for name in ("batched", "half", "batched_half"):
        if f"update_{name}_steps_per_s" in row:
            seconds = steps / row[f"update_{name}_steps_per_s"] * k / row["update_timesteps"]
            out[f"round_pg_update_{name}_s"] = seconds
            out[f"pg_update_{name}_share"] = seconds / (sampling + seconds)
    return out


def measure(pipe, setting: str, n: int, steps: int, guidance: float, batch: int, update_batch: int,
            repeats: int = 2, compiled: bool = False, likelihood_steps: int = 4, precision: str = "fp32") -> dict:
    """Time sampling and the update for one pipeline (see the module docstring); returns one result row.

    ``precision``: how the engine runs the network ("fp32", or "bf16"/"fp16" autocast, as a run's ``precision``);
    the plain pipeline runs under the same autocast.
    """
    from hero.models.families import denoiser_for
    from hero.precision import Precision

    device = pipe.device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = denoiser_for(pipe, Precision.named(precision))
    size = model.image_size()
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    row = {"setting": setting, "device": name, "dtype": str(model.network.dtype).removeprefix("torch."),
           "precision": precision,
           "resolution": size, "n": n, "steps": steps, "guidance": guidance, "batch": batch}
    with torch.no_grad():
        sampled = _sampling(model, n, steps, guidance, batch, repeats, sync, compiled)
    traj = sampled.pop("traj")
    row.update(sampled)
    row.update(_update(model, traj, min(update_batch, n), min(5, steps), repeats, sync))
    row.update(_likelihood(model, traj, 2 * update_batch, likelihood_steps, repeats, sync))
    row.update(round_seconds(row))
    peak = peak_tflops(row["device"]) if cuda and model.network.dtype in (torch.bfloat16, torch.float16) else None
    if peak:
        row.update(peak_tflops=peak, peak_fraction=row["rollout_tflops_per_s"] / peak,
                   update_peak_fraction=row["update_tflops_per_s"] / peak)
    if cuda:
        row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def run_compute(n: int = 16, steps: int = 20, repeats: int = 2, sd15: bool | None = None, sd15_n: int = 8,
                device: str | None = None, echo: Callable[[str], None] = print, sdxl: bool = False,
                sdxl_n: int = 4, sd35: bool = False, flux: bool = False, compiled: bool = False,
                precisions: tuple[str, ...] = ("fp32",)) -> dict:
    """The tiny model on CPU (one row per precision, its frozen weights stored as a run at it stores them; each
    row after the first gains ``speedup_vs_<first>``: rollout, pipeline and update rates against the first row's),
    then SD 1.5 at 512 px where a GPU is present (or asked for), then SDXL, SD 3.5 Medium and FLUX.1-dev at
    1024 px when asked for; echoes each row."""
    import json

    from hero.models import load_pipeline
    from hero.models.loading import weight_dtype
    from hero.sampling import DEFAULT_GUIDANCE

    rows: list[dict] = []
    for precision in precisions:
        row = measure(load_pipeline("tiny-shapes", dtype=weight_dtype(precision)), "tiny-shapes", n, steps,
                      DEFAULT_GUIDANCE, batch=n, update_batch=8, repeats=repeats, compiled=compiled,
                      precision=precision)
        if rows:
            row[f"speedup_vs_{rows[0]['precision']}"] = {
                key: round(row[key] / rows[0][key], 3) for key in ("rollout_images_per_s", "pipeline_images_per_s",
                                                                   "update_steps_per_s", "likelihood_steps_per_s")}
        rows.append(row)
        echo(json.dumps(row))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # (asked for, builder, setting, images per timing, guidance of the model card, trajectories per update pass)
    architectures = [
        (sd15 or (sd15 is None and device.startswith("cuda")), build_sd_pipeline,
         "sd15-architecture (random weights)", sd15_n, 5.0, 2),
        (sdxl, build_sdxl_pipeline, "sdxl-architecture (random weights)", sdxl_n, 5.0, 1),
        (sd35, build_sd3_pipeline, "sd3.5-medium-architecture (random weights, no T5)", sdxl_n, 4.5, 1),
        (flux, build_flux_pipeline, "flux.1-dev-architecture (random weights, 2-layer T5)", sdxl_n, 3.5, 1),
    ]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    for wanted, build, setting, k, guidance, update_batch in architectures:
        if not wanted:
            continue
        pipe = build() if build is build_sd_pipeline else build(device=device)  # the large ones: built in place
        pipe = pipe.to(device=device, dtype=dtype)
        rows.append(measure(pipe, setting, k, steps, guidance, batch=k, update_batch=update_batch, repeats=repeats,
                            compiled=compiled))
        echo(json.dumps(rows[-1]))
        del pipe  # free the GPU for the next architecture
    return {"results": rows, "torch": torch.__version__, "threads": torch.get_num_threads()}
