"""SDXL on the model layer (``hero.models.denoiser.SDXLDenoiser``), on a tiny random StableDiffusionXLPipeline.

The pipeline is built from configs (tests/conftest.py): two CLIP text encoders with local tokenizers, a UNet with
SDXL's pooled-text and size conditioning, a VAE. Nothing is downloaded.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline
from safetensors.torch import load_file

from conftest import SDXL_POOLED_DIM
from hero.algorithms import make_algorithm
from hero.algorithms.base import rollout_kwargs, round_generator
from hero.config import TrainConfig, load_config
from hero.distributed import SINGLE
from hero.lora import lora_parameters
from hero.models import load_pipeline
from hero.models.denoiser import SDXLDenoiser, denoiser_for, pack_pooled, unpack_pooled
from hero.rollout import rollout, step_log_prob
from hero.train import train

PROMPTS = ["a red circle", "a blue square"]


def test_the_pooled_embedding_packs_into_extra_rows_and_back():
    embeds, pooled = torch.randn(2, 5, 16), torch.randn(2, 40)  # 40 > 16: three extra rows, the last one padded
    packed = pack_pooled(embeds, pooled)
    assert packed.shape == (2, 8, 16) and torch.equal(packed[:, :5], embeds)
    assert torch.equal(packed[:, 7, 8:], torch.zeros(2, 8))
    tokens, back = unpack_pooled(packed, 40)
    assert torch.equal(tokens, embeds) and torch.equal(back, pooled)


def test_encode_is_the_pipelines_own_with_the_pooled_embedding_inside(tiny_sdxl_pipeline):
    pipe = tiny_sdxl_pipeline
    model = denoiser_for(pipe)
    assert isinstance(model, SDXLDenoiser) and model.pooled_dim == SDXL_POOLED_DIM and model.image_size() == 16
    cond, uncond = model.encode(PROMPTS)
    ref_cond, ref_uncond, ref_pooled, ref_pooled_uncond = pipe.encode_prompt(PROMPTS, device="cpu")
    tokens, pooled = unpack_pooled(cond, model.pooled_dim)
    assert torch.equal(tokens, ref_cond) and torch.equal(pooled, ref_pooled)
    assert torch.equal(uncond, torch.zeros_like(uncond))  # force_zeros_for_empty_prompt, as the pipeline does
    assert ref_uncond.abs().max() == 0 and ref_pooled_uncond.abs().max() == 0


def test_deterministic_rollout_is_the_pipelines_and_log_probs_reevaluate_exactly(tiny_sdxl_pipeline):
    pipe = tiny_sdxl_pipeline
    ddim = rollout(pipe, ["a red circle"], guidance_scale=3.0, num_steps=4, eta=0.0, seed=1)
    ours = pipe("a red circle", num_inference_steps=4, guidance_scale=3.0, eta=0.0,
                latents=ddim.start_noise.clone(), output_type="latent").images
    # The same time ids (1024-style size conditioning at this model's 16 px) and pooled embedding as diffusers'.
    assert torch.allclose(ours, ddim.final_latents, atol=1e-6)
    traj = rollout(pipe, PROMPTS, guidance_scale=3.0, num_steps=4, seed=0)
    model = denoiser_for(pipe)
    for s in range(traj.num_steps):
        assert torch.equal(step_log_prob(model, traj, [0, 1], s), traj.log_probs[:, s])  # ratio exactly 1
    assert traj.images.shape == (2, 16, 16, 3)


def test_an_sdxl_folder_loads_as_sdxl_with_ddim_and_another_family_is_one_line(tmp_path, tiny_sdxl_pipeline):
    tiny_sdxl_pipeline.save_pretrained(tmp_path / "xl")
    pipe = load_pipeline(tmp_path / "xl")
    assert type(pipe) is StableDiffusionXLPipeline and isinstance(pipe.scheduler, DDIMScheduler)
    assert isinstance(denoiser_for(pipe), SDXLDenoiser)
    index = (tmp_path / "xl" / "model_index.json")
    index.write_text(index.read_text().replace("StableDiffusionXLPipeline", "FluxPipeline"))
    with pytest.raises(ValueError, match="is a FluxPipeline folder") as err:
        load_pipeline(tmp_path / "xl")
    assert "\n" not in str(err.value)


def _config(folder, algo: str, out, budget: int) -> TrainConfig:
    return load_config(None, ["sampler.steps=3", "sampler.guidance_scale=3", "pg.timesteps_per_traj=2",
                              "hero.encoder_epochs=2", "likelihood.steps_per_round=3"],
                       model=str(folder), prompt="a red circle", algo=algo, feedback="reward:jpeg", budget=budget,
                       images_per_round=4, out=str(out), seed=2)


@pytest.mark.parametrize("algo", ["hero", "ddpo", "raft"])
def test_two_sdxl_rounds_train_a_lora_sdxl_loads_and_resume_ends_the_same(algo, tmp_path, tiny_sdxl_pipeline,
                                                                           tiny_sdxl_pipeline_factory):
    tiny_sdxl_pipeline.save_pretrained(tmp_path / "xl")
    cfg = _config(tmp_path / "xl", algo, tmp_path / "run", budget=8)
    run = train(cfg, show_progress=False)
    assert len(run.metrics()) == 2
    # Round 1 was sampled with round 0's LoRA: loaded into a fresh SDXL pipeline by diffusers' own loader, it
    # draws the same images from the same noise (HERO's round 1 starts from its guided noise: the trainer's).
    trainer = make_algorithm(cfg, tiny_sdxl_pipeline_factory(), SINGLE)
    trainer.load(run.checkpoint_dir(0))
    noise = trainer.start_noise(1, 4, round_generator(cfg.seed, 1, 0))
    fresh = tiny_sdxl_pipeline_factory()
    fresh.load_lora_weights(str(run.checkpoint_dir(0) / "lora"))
    again = rollout(fresh, [cfg.prompt] * 4, generator=round_generator(cfg.seed, 1, 1), start_noise=noise,
                    **rollout_kwargs(cfg))
    assert np.array_equal(again.images, run.round_images(1))
    assert lora_parameters(fresh)  # the adapter is in the UNet
    # Stopped after one round and resumed: the same final LoRA as the uninterrupted run.
    first = train(_config(tmp_path / "xl", algo, tmp_path / "resumed", budget=4), show_progress=False)
    train(_config(tmp_path / "xl", algo, first.path, budget=8), resume=True, show_progress=False)
    a = load_file(run.path / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(first.path / "lora" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it learned something
