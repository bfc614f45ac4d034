"""Real checkpoints from local paths: diffusers folders and single files, precision and memory settings.

SD-architecture pipelines are built from configs (tests/conftest.py): nothing is downloaded.
"""

import importlib.util
import json
import re

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from hero.config import ConfigError, PolicyGradientSettings, load_config
from hero.lora import add_lora, lora_parameters
from hero.models import PixelStableDiffusionPipeline, load_pipeline
from hero.models.families import denoiser_for
from hero.models.loading import configure_memory, weight_dtype
from hero.policy_gradient import clip_and_step, make_optimizer, policy_gradient_update
from hero.precision import FP32, Precision
from hero.rollout import rollout, step_log_prob
from hero.sampling import sample_images
from hero.train import train


def test_tiny_random_sd_pipeline_loads_and_samples_through_the_loader(tmp_path, tiny_sd_pipeline):
    tiny_sd_pipeline.save_pretrained(tmp_path / "sd")
    pipe = load_pipeline(tmp_path / "sd")
    assert type(pipe) is StableDiffusionPipeline and pipe.vae is not None
    assert isinstance(pipe.scheduler, DDIMScheduler)  # the engine's sampler, whatever the folder shipped
    a = sample_images(pipe, "a red circle", 2, seed=0, steps=3, guidance_scale=5.0)
    b = sample_images(pipe, "a red circle", 2, seed=0, steps=3, guidance_scale=5.0)
    assert a.shape == (2, 16, 16, 3) and np.array_equal(a, b)


def test_pixel_pipeline_folder_round_trips(tmp_path, tiny_pixel_pipeline):
    tiny_pixel_pipeline.save_pretrained(tmp_path / "px")
    pipe = load_pipeline(tmp_path / "px")
    assert isinstance(pipe, PixelStableDiffusionPipeline)
    assert np.array_equal(sample_images(tiny_pixel_pipeline, "a red circle", 2, seed=1, steps=3),
                          sample_images(pipe, "a red circle", 2, seed=1, steps=3))


# --- single-file checkpoints (the original CompVis / Stability key layout) -------------------------------------
#
# diffusers reads this layout (from_single_file) but ships no writer, so the test writes one: the inverse of the
# documented SD 1.x naming, for the tiny pipeline's blocks. If this inverse were wrong, the load below would fail
# or give other weights, so the round trip checks both directions.

def _resnet_ldm(rest: str) -> str:
    for new, old in (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
                     ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")):
        if rest.startswith(new):
            return old + rest[len(new):]
    raise KeyError(rest)


def _unet_ldm(unet) -> dict[str, torch.Tensor]:
    per_level = unet.config.layers_per_block + 1  # LDM counts a level's resnets and its down/upsampler as blocks
    state = unet.state_dict()
    up_attn = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    out = {}
    for key, value in state.items():
        prefix = next((p for p in fixed if key.startswith(p)), None)
        if prefix:
            new = fixed[prefix] + key[len(prefix):]
        elif m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, j = int(m[2]), int(m[4])
            index = 1 + i * per_level + j if m[1] == "down" else i * per_level + j
            inner = _resnet_ldm(m[5]) if m[3] == "resnets" else m[5]
            new = f"{'input' if m[1] == 'down' else 'output'}_blocks.{index}.{0 if m[3] == 'resnets' else 1}.{inner}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            i = int(m[1])
            new = f"output_blocks.{i * per_level + per_level - 1}.{2 if i in up_attn else 1}.conv.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet_ldm(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        else:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


def _vae_ldm(vae) -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in vae.state_dict().items():
        new = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.",
                     new)
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)",
                         new):
            new = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if value.ndim == 2:  # LDM's attention projections are 1×1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new.replace(".conv_shortcut.", ".nin_shortcut.")] = value
    return out


def _original_layout(pipe) -> dict[str, torch.Tensor]:
    clip = {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in pipe.text_encoder.state_dict().items()}
    return {k: v.contiguous() for k, v in {**_unet_ldm(pipe.unet), **_vae_ldm(pipe.vae), **clip}.items()}


@pytest.fixture(scope="module")
def single_file(tmp_path_factory, tiny_sd_pipeline_factory):
    """(checkpoint.safetensors of the seed-0 pipeline, a config folder from another seed with no weights, seed 0)."""
    tmp = tmp_path_factory.mktemp("single")
    pipe = tiny_sd_pipeline_factory(0)
    save_file(_original_layout(pipe), tmp / "tiny-sd.safetensors")
    tiny_sd_pipeline_factory(1).save_pretrained(tmp / "config")
    for weights in (tmp / "config").rglob("*.safetensors"):
        weights.unlink()  # the architecture and the tokenizer only: the weights must come from the file
    return tmp / "tiny-sd.safetensors", tmp / "config", pipe


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in sa.items())


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_checkpoint_loads_with_a_local_config_folder(single_file, suffix, tmp_path):
    path, config, reference = single_file
    if suffix == ".ckpt":  # the pickled variant: {"state_dict": ...} as the original training code saved it
        torch.save({"state_dict": load_file(path)}, tmp_path / "tiny-sd.ckpt")
        path = tmp_path / "tiny-sd.ckpt"
    pipe = load_pipeline(path, model_config_dir=config)
    assert type(pipe) is StableDiffusionPipeline and isinstance(pipe.scheduler, DDIMScheduler)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(pipe, name), getattr(reference, name)), name
    assert np.array_equal(sample_images(pipe, "a red circle", 2, seed=0, steps=3, guidance_scale=5.0),
                          sample_images(reference, "a red circle", 2, seed=0, steps=3, guidance_scale=5.0))


def test_single_file_errors_are_one_line_and_name_what_to_set(single_file, tmp_path):
    path, config, _ = single_file
    with pytest.raises(ValueError, match="model_config_dir"):
        load_pipeline(path)
    with pytest.raises(ConfigError, match="missing value for 'model_config_dir'"):
        load_config(None, [], prompt="a red circle", model=str(path))
    cfg = load_config(None, [f"model_config_dir={config}"], prompt="a red circle", model=str(path))
    assert cfg.model_config_dir == str(config)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(path, model_config_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_pipeline(tmp_path / "missing.safetensors", model_config_dir=config)
    bad = tmp_path / "not-sd.safetensors"
    save_file({"something.else": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="cannot load .* as an SD 1.x/2.x checkpoint") as err:
        load_pipeline(bad, model_config_dir=config)
    assert "\n" not in str(err.value)


# --- precision and memory settings ------------------------------------------------------------------------------

def test_bf16_weights_autocast_unet_fp32_log_probs_and_lora(tiny_sd_pipeline):
    pipe = tiny_sd_pipeline.to(dtype=weight_dtype("bf16"))
    add_lora(pipe.unet)
    with torch.no_grad():
        for p in lora_parameters(pipe):
            p.add_(0.1 * torch.randn_like(p))
    assert all(p.dtype == torch.float32 for p in lora_parameters(pipe))
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16
    model = denoiser_for(pipe, Precision.named("bf16"))
    assert model.precision.dtype == torch.bfloat16 and model.precision.scaler is None  # bf16: fp32's exponent range
    traj = rollout(model, ["a red circle", "a blue square"], guidance_scale=3.0, num_steps=3, seed=0, batch_size=2)
    assert traj.log_probs.dtype == torch.float32 and traj.latents.dtype == torch.float32
    assert torch.isfinite(traj.log_probs).all()
    logp = step_log_prob(model, traj, [0, 1], 1)
    assert logp.dtype == torch.float32 and torch.equal(logp.detach(), traj.log_probs[:, 1])  # ratio exactly 1
    opt = make_optimizer(pipe.unet, lr=3e-4)
    before = [p.detach().clone() for p in lora_parameters(pipe)]
    stats = policy_gradient_update(model, traj, torch.tensor([1.0, 0.0]), opt,
                                   PolicyGradientSettings(timesteps_per_traj=2, clip_range=10.0, min_sigma=0.0))
    assert np.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    after = list(lora_parameters(pipe))
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    with pytest.raises(ValueError, match="precision"):
        weight_dtype("fp8")


def test_bf16_on_a_cpu_runs_the_math_kernel_or_the_matmul_attention(tiny_sd_pipeline):
    import torch.nn.functional as F

    from hero.precision import autocast

    # The fused kernel's bf16 backward is ~5x slower than fp32's on a CPU (docs/speed.md): "auto" runs the math
    # kernel there in every call (so rollout and update compute alike); "pytorch" leaves PyTorch's choice.
    with autocast("cpu", torch.bfloat16):
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    for args in ((torch.bfloat16, "pytorch"), (torch.float16, "auto"), (torch.bfloat16, "matmul")):
        with autocast("cpu", *args):
            assert torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled() and not torch.is_autocast_enabled("cpu")  # all restored
    # "matmul" (memory.attention=matmul): every F.scaled_dot_product_attention inside runs as two matmuls and an
    # fp32 softmax, in slices of the batch; it must still be attention, masks, scale and fallbacks included.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, 256, 8, generator=g) for _ in range(3))  # 4 × 256 × 256 scores: slices of 4
    bool_mask = torch.rand(6, 1, 256, 256, generator=g) > 0.3
    bool_mask[..., 0] = True  # every row keeps a key
    float_mask = torch.randn(1, 4, 256, 256, generator=g)
    for kw in ({}, {"attn_mask": bool_mask}, {"attn_mask": float_mask}, {"scale": 0.2}, {"is_causal": True}):
        reference = F.scaled_dot_product_attention(q, k, v, **kw)
        for dtype, atol in ((torch.bfloat16, 0.05), (None, 1e-5)):
            leaves = [(t.bfloat16() if dtype else t).clone().requires_grad_() for t in (q, k, v)]
            with autocast("cpu", dtype, "matmul"):
                out = F.scaled_dot_product_attention(*leaves, **kw)
            assert torch.allclose(out.float(), reference, atol=atol), (kw, dtype)
            out.float().sum().backward()
            assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)


def test_memory_attention_matmul_reaches_the_trainer(tiny_sd_pipeline):
    from hero.algorithms.base import LoraPolicy

    cfg = load_config(None, ["memory.attention=matmul", "precision=bf16"], prompt="p")
    model = LoraPolicy(cfg, tiny_sd_pipeline).model
    assert model.precision.attention == "matmul"
    with torch.no_grad():  # sampled in one batch of 3, re-evaluated 2 at a time: still a ratio of exactly 1
        traj = rollout(model, ["a red circle"] * 3, guidance_scale=3.0, num_steps=3, seed=0, batch_size=3)
        assert torch.equal(step_log_prob(model, traj, [0, 2], 1), traj.log_probs[[0, 2], 1])
    with pytest.raises(ValueError, match="attention"):
        Precision.named("bf16", "flash")


def _lora_grads(pipe, traj) -> list[torch.Tensor]:
    for p in lora_parameters(pipe):
        p.grad = None
    step_log_prob(denoiser_for(pipe), traj, [0, 1], 2).sum().backward()
    return [p.grad.clone() for p in lora_parameters(pipe)]


def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_sd_pipeline):
    pipe = tiny_sd_pipeline
    add_lora(pipe.unet)
    with torch.no_grad():
        for p in lora_parameters(pipe):
            p.add_(0.1 * torch.randn_like(p))
    traj = rollout(pipe, ["a red circle", "a blue square"], guidance_scale=3.0, num_steps=3, seed=0)
    plain = _lora_grads(pipe, traj)
    configure_memory(pipe, gradient_checkpointing=True)
    assert pipe.unet.is_gradient_checkpointing
    checkpointed = _lora_grads(pipe, traj)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(plain, checkpointed, strict=True))
    assert any(bool(g.abs().sum() > 0) for g in checkpointed)


def test_attention_choice(tiny_sd_pipeline):
    configure_memory(tiny_sd_pipeline, attention="sdpa")  # diffusers' default processor: nothing to change
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(ValueError, match="xformers"):
            configure_memory(tiny_sd_pipeline, attention="xformers")
    with pytest.raises(ConfigError, match="memory.attention"):
        load_config(None, ["memory.attention=flash"], prompt="p")


def test_a_bf16_run_with_gradient_checkpointing_trains_and_saves_an_fp32_lora(tmp_path, tiny_sd_pipeline):
    tiny_sd_pipeline.save_pretrained(tmp_path / "sd")
    cfg = load_config(None, ["sampler.steps=3", "sampler.guidance_scale=5", "pg.timesteps_per_traj=2",
                             "precision=bf16", "memory.gradient_checkpointing=true"],
                      model=str(tmp_path / "sd"), prompt="a red circle", algo="ddpo", feedback="reward:jpeg",
                      budget=4, images_per_round=4, out=str(tmp_path / "run"))
    run = train(cfg, show_progress=False)
    assert run.metrics()[0]["pg_grad_norm"] > 0
    lora = load_file(run.path / "lora" / "pytorch_lora_weights.safetensors")
    assert lora and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in lora.values())


def test_an_fp16_run_checkpoints_its_loss_scale_and_resumes_at_it(tmp_path, tiny_sd_pipeline):
    tiny_sd_pipeline.save_pretrained(tmp_path / "sd")
    overrides = ["sampler.steps=3", "pg.timesteps_per_traj=2", "precision=fp16"]
    common = dict(model=str(tmp_path / "sd"), prompt="a red circle", algo="ddpo", feedback="reward:jpeg",
                  images_per_round=4, out=str(tmp_path / "run"))
    run = train(load_config(None, overrides, budget=4, **common), show_progress=False)
    saved = json.loads((run.checkpoint_dir(0) / "loss_scale.json").read_text())
    assert saved["scale"] == 2.0**16 and saved["good_steps"] > 0  # finite steps counted toward growth
    # A scale the run had lowered (say after overflows) must survive the restart, not jump back to 2^16.
    (run.checkpoint_dir(0) / "loss_scale.json").write_text(json.dumps({"scale": 512.0, "good_steps": 199}))
    train(load_config(None, overrides, budget=8, **common), resume=True, show_progress=False)
    after = json.loads((run.checkpoint_dir(1) / "loss_scale.json").read_text())
    assert after["scale"] == 1024.0  # 199 + one finite step reaches the growth interval and doubles 512
    assert run.metrics()[1]["pg_grad_norm"] > 0


def test_fp16_scales_the_gradients_through_the_unet_and_unscales_them_for_the_step(tiny_sd_pipeline_factory):
    ref, half = tiny_sd_pipeline_factory(0), tiny_sd_pipeline_factory(0).to(dtype=weight_dtype("fp16"))
    for pipe in (ref, half):
        add_lora(pipe.unet)
    with torch.no_grad():
        for a, b in zip(lora_parameters(ref), lora_parameters(half), strict=True):
            a.add_(0.1 * torch.randn_like(a))
            b.copy_(a)
    traj = rollout(ref, ["a red circle", "a blue square"], guidance_scale=3.0, num_steps=3, seed=0)
    cfg = PolicyGradientSettings(max_grad_norm=1e9, min_sigma=0.0)  # no clipping: compare the norms themselves

    def grad_norm(pipe, precision=FP32) -> float:
        opt = make_optimizer(pipe.unet, lr=3e-4)
        step_log_prob(denoiser_for(pipe, precision), traj, [0, 1], 1).sum().backward()
        return clip_and_step(opt, cfg.max_grad_norm, scaler=precision.scaler)

    exact = grad_norm(ref)
    fp16 = Precision.named("fp16")
    assert fp16.scaler is not None and fp16.scaler.scale > 1
    assert grad_norm(half, fp16) == pytest.approx(exact, rel=0.05)  # scaled through the UNet, unscaled for the step
    fp16.scaler.scale = 1e38  # overflows: the step is skipped and the scale halved
    before = [p.detach().clone() for p in lora_parameters(half)]
    assert not np.isfinite(grad_norm(half, fp16)) and fp16.scaler.scale == 5e37
    assert all(torch.equal(a, b) for a, b in zip(lora_parameters(half), before, strict=True))
    assert Precision.named("fp32") == FP32 and FP32.scaler is None
    with pytest.raises(ValueError, match="precision='fp8'"):
        Precision.named("fp8")


def test_auto_precision_picks_bf16_only_where_the_cpu_has_it(tmp_path, monkeypatch):
    from hero.models import loading

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not loading.cpu_has_native_bf16(info)
    info.write_text("flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert loading.cpu_has_native_bf16(info)
    assert not loading.cpu_has_native_bf16(tmp_path / "missing")  # unknown: never bf16
    monkeypatch.delenv(loading.CPU_BF16_ENV, raising=False)  # tests/conftest.py sets it to 0
    for native, picked in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda native=native: native)
        assert loading.resolve_precision("auto", "cpu") == picked
    assert loading.resolve_precision("fp16", "cpu") == "fp16"  # an explicit choice is kept
    for forced, picked in (("1", "bf16"), ("0", "fp32")):  # the environment decides over the flags (here: none)
        monkeypatch.setenv(loading.CPU_BF16_ENV, forced)
        assert loading.resolve_precision("auto", "cpu") == picked
    monkeypatch.setenv(loading.CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="HERO_CPU_BF16='yes': expected 1"):
        loading.resolve_precision("auto", "cpu")


def test_a_run_with_auto_precision_records_what_it_used(tmp_path, monkeypatch):
    from hero.config import TrainConfig, load_config
    from hero.models import loading
    from hero.train import train

    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    cfg = load_config(None, ["sampler.steps=2", "pg.timesteps_per_traj=1", "hero.encoder_epochs=1",
                             "likelihood.steps_per_round=2", "likelihood.batch_size=4"],
                      prompt="a red circle", budget=4, images_per_round=4, precision="auto",
                      out=str(tmp_path / "run"))
    run = train(cfg, show_progress=False)
    assert TrainConfig.from_yaml(run.config_path).precision == "fp32"
