"""SDXL on the model layer (``hero.models.denoiser.SDXLDenoiser``), on a tiny random StableDiffusionXLPipeline.

The pipeline is built from configs (tests/conftest.py): two CLIP text encoders with local tokenizers, a UNet with
SDXL's pooled-text and size conditioning, a VAE. Nothing is downloaded.
"""

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

from conftest import SDXL_POOLED_DIM
from hero.models import load_pipeline
from hero.models.denoiser import SDXLDenoiser, pack_pooled, unpack_pooled
from hero.models.families import denoiser_for
from hero.rollout import rollout, step_log_prob

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
    index.write_text(index.read_text().replace("StableDiffusionXLPipeline", "QwenImagePipeline"))
    with pytest.raises(ValueError, match="is a QwenImagePipeline folder") as err:
        load_pipeline(tmp_path / "xl")
    assert "\n" not in str(err.value)


def test_an_fp16_vae_that_asks_for_it_decodes_in_fp32(tiny_sdxl_pipeline):
    from hero.models.denoiser import vae_decode

    vae = tiny_sdxl_pipeline.vae
    latents = torch.randn(1, vae.config.latent_channels, 4, 4)
    expected = vae_decode(vae, latents)
    vae.to(torch.float16).register_to_config(force_upcast=True)  # SDXL's VAE config: it overflows in fp16
    got = vae_decode(vae, latents)
    assert vae.dtype == torch.float32 and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-2)  # the weights went through fp16 once
