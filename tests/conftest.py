"""Shared tiny, randomly initialised pipelines (built in milliseconds, nothing downloaded).

- ``tiny_pixel_pipeline``: the tiny-shapes architecture in miniature: PixelStableDiffusionPipeline (no VAE),
  8×8 RGB "latents", a 1-layer BERT text encoder, v-prediction DDIM with trailing timesteps.
- ``tiny_sd_pipeline``: a StableDiffusionPipeline with AutoencoderKL (16×16 images, 4×8×8 latents), a 1-layer
  CLIP text encoder, ε-prediction DDIM with SD 1.x's scaled-linear schedule and leading timesteps.
- ``tiny_sdxl_pipeline``: a StableDiffusionXLPipeline built the same way: two CLIP text encoders (the second with
  a projection: the pooled embedding), a UNet with SDXL's "text_time" added conditioning, DDIM.
- ``tiny_sd3_pipeline``: a StableDiffusion3Pipeline: a one-layer SD3Transformer2DModel, two CLIP text encoders with
  projections, no T5 (the pipeline then uses zeros for its tokens, as diffusers allows), a VAE with SD 3's shift
  factor, the FlowMatchEulerDiscreteScheduler with SD 3's shift of 3.
- ``tiny_flux_pipeline``: a FluxPipeline: a guidance-distilled FluxTransformer2DModel (one double- and one
  single-stream block), a CLIP text encoder (pooled) and a one-layer T5 encoder (its tokenizer the local character
  CLIP one: the pipeline only calls it), the scheduler with FLUX's dynamic shift.

The ``*_factory`` fixtures build a fresh pipeline with the same random weights for the same ``seed``
(e.g. to load a saved LoRA into an untouched copy).
"""

from __future__ import annotations

import os
import string

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from hero.models.loading import CPU_BF16_ENV
from hero.models.pixel_pipeline import PixelStableDiffusionPipeline
from hero.models.tiny_shapes import sampling_scheduler

torch.set_num_threads(1)  # a background job shares this machine; tiny models gain nothing from threads

TEXT_DIM = 16
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "red", "green", "blue", "circle", "square",
         "triangle", "on", "the", "left", "right", "small", "big"]

# precision "auto" (the default) picks bf16 on a CPU with native bf16 and fp32 elsewhere: the tests pin fp32 (here
# and in every subprocess they start), so they compute the same on any machine; those about bf16 ask for it.
os.environ[CPU_BF16_ENV] = "0"


def _tiny_unet(in_channels: int, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM, attention_head_dim=4,
        norm_num_groups=4, **extra)


def build_tiny_pixel_pipeline(seed: int = 0) -> PixelStableDiffusionPipeline:
    torch.manual_seed(seed)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, model_max_length=8)
    text_encoder = BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=TEXT_DIM, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=16),
                             add_pooling_layer=False)
    text_encoder.config.use_attention_mask = True  # as tiny-shapes does: padding is masked in the encoder
    text_encoder.requires_grad_(False).eval()
    # addition_embed_type="text" like the real tiny-shapes UNet (pooled prompt added to the time embedding).
    unet = _tiny_unet(3, addition_embed_type="text", addition_embed_type_num_heads=2)
    pipe = PixelStableDiffusionPipeline(None, text_encoder, tokenizer, unet, sampling_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip_tokenizer() -> CLIPTokenizer:
    # Character-level CLIP BPE vocabulary (no merges): enough for lower-case ASCII prompts.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def _clip_config(tokenizer: CLIPTokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, **extra)


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=4, layers_per_block=1, sample_size=16)


def _sd_scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def build_tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    text_encoder.requires_grad_(False).eval()
    vae = _tiny_vae()
    unet = _tiny_unet(4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SDXL_POOLED_DIM, SDXL_TIME_DIM = 8, 4


def build_tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """SD 3 in miniature, as diffusers' own tests build it (without T5): joint attention over 2 × TEXT_DIM."""
    torch.manual_seed(seed)
    encoders = [CLIPTextModelWithProjection(_clip_config(_clip_tokenizer(), projection_dim=TEXT_DIM)).eval()
                for _ in range(2)]
    for encoder in encoders:
        encoder.requires_grad_(False)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=2 * TEXT_DIM, pooled_projection_dim=2 * TEXT_DIM)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, layers_per_block=1, sample_size=16, shift_factor=0.0609,
                        scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=encoders[0], tokenizer=_clip_tokenizer(),
                                    text_encoder_2=encoders[1], tokenizer_2=_clip_tokenizer(),
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL in miniature: the UNet attends to both encoders' tokens (2 × TEXT_DIM) and adds the pooled embedding
    (SDXL_POOLED_DIM) and six time ids (SDXL_TIME_DIM each) to its time embedding, as diffusers' own tests build it."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2, projection_dim=SDXL_POOLED_DIM))
    for encoder in (text_encoder, text_encoder_2):
        encoder.requires_grad_(False).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TEXT_DIM, attention_head_dim=4, norm_num_groups=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=6 * SDXL_TIME_DIM + SDXL_POOLED_DIM)
    pipe = StableDiffusionXLPipeline(vae=_tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=_sd_scheduler(),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pixel_pipeline_factory():
    """Callable ``(seed=0) -> PixelStableDiffusionPipeline`` building a fresh tiny pixel pipeline."""
    return build_tiny_pixel_pipeline


@pytest.fixture(scope="session")
def tiny_sd_pipeline_factory():
    """Callable ``(seed=0) -> StableDiffusionPipeline`` building a fresh tiny latent-space pipeline."""
    return build_tiny_sd_pipeline


@pytest.fixture(scope="session")
def tiny_sdxl_pipeline_factory():
    """Callable ``(seed=0) -> StableDiffusionXLPipeline`` building a fresh tiny SDXL pipeline."""
    return build_tiny_sdxl_pipeline


@pytest.fixture
def tiny_sdxl_pipeline(tiny_sdxl_pipeline_factory) -> StableDiffusionXLPipeline:
    """A fresh tiny StableDiffusionXLPipeline (safe to mutate)."""
    return tiny_sdxl_pipeline_factory()


def build_tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """FLUX.1-dev in miniature, as diffusers' own tests build it, with a T5 built from a config
    (``guidance_embeds=False``: FLUX.1-schnell's layout, no guidance embedding)."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
    clip = CLIPTextModel(_clip_config(tokenizer)).eval().requires_grad_(False)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4,
                                 pad_token_id=1, eos_token_id=1, decoder_start_token_id=0)).eval().requires_grad_(False)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=TEXT_DIM, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 4, 8))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, layers_per_block=1, sample_size=16, shift_factor=0.1159,
                        scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer,
                        text_encoder_2=t5, tokenizer_2=tokenizer_2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_flux_pipeline_factory():
    """Callable ``(seed=0) -> FluxPipeline`` building a fresh tiny FLUX pipeline."""
    return build_tiny_flux_pipeline


@pytest.fixture
def tiny_flux_pipeline(tiny_flux_pipeline_factory) -> FluxPipeline:
    """A fresh tiny FluxPipeline (safe to mutate)."""
    return tiny_flux_pipeline_factory()


@pytest.fixture(scope="session")
def tiny_sd3_pipeline_factory():
    """Callable ``(seed=0) -> StableDiffusion3Pipeline`` building a fresh tiny SD 3 pipeline."""
    return build_tiny_sd3_pipeline


@pytest.fixture
def tiny_sd3_pipeline(tiny_sd3_pipeline_factory) -> StableDiffusion3Pipeline:
    """A fresh tiny StableDiffusion3Pipeline (safe to mutate)."""
    return tiny_sd3_pipeline_factory()


@pytest.fixture
def tiny_pixel_pipeline(tiny_pixel_pipeline_factory) -> PixelStableDiffusionPipeline:
    """A fresh tiny pixel-space pipeline (safe to mutate: add LoRA, train)."""
    return tiny_pixel_pipeline_factory()


@pytest.fixture
def tiny_sd_pipeline(tiny_sd_pipeline_factory) -> StableDiffusionPipeline:
    """A fresh tiny StableDiffusionPipeline with a VAE (safe to mutate)."""
    return tiny_sd_pipeline_factory()


class NeverAsk:
    """A feedback source that fails when asked: a resumed run must take judged rounds from the log."""

    name = "sim"

    def judge_round(self, *args, **kwargs):
        raise AssertionError("a judged round was asked again")

    judge_pairs = judge_round


@pytest.fixture
def never_ask() -> NeverAsk:
    return NeverAsk()
