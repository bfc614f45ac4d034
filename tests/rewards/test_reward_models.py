"""Reward models on tiny random CLIPs saved to disk and loaded through the registry, as real checkpoints are."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

from hero.config import REWARDS
from hero.rewards import REWARD_MODELS, JpegReward, RewardModelUnavailable, jpeg_size_kb, load_reward_model
from hero.rewards.clip_models import CLIP_MEAN, CLIP_STD
from hero.rewards.tiny import save_tiny_aesthetic_head, save_tiny_clip

PROJ = 24  # != the hidden size (32): the aesthetic head's input follows the projection dim


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", projection_dim=PROJ)


@pytest.fixture(scope="module")
def head_path(tmp_path_factory):
    return save_tiny_aesthetic_head(tmp_path_factory.mktemp("head") / "head.safetensors", input_dim=PROJ)


def _images(n=3, h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _hand_features(model, tokenizer, images, prompts):
    """Normalised CLIP features the plain way: CLIP's mean/std on a 32x32 image (no resize), the model's own calls."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image = _features(model.get_image_features(pixel_values=x))
        text = _features(model.get_text_features(**tokens))
    return image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)


def test_registry_names_match_the_feedback_specs():
    assert set(REWARD_MODELS) == set(REWARDS)


@pytest.mark.parametrize("name", ["aesthetic", "pickscore", "hpsv2", "jpeg", "jpeg-incompressibility"])
def test_scores_one_per_image_from_uint8_or_pixels(name, clip_dir, head_path):
    model = load_reward_model(name, path=clip_dir, head_path=head_path)
    images = _images(4, 40, 48)  # not square, not the model's size: resized and centre-cropped
    scores = model.score(images, "two red squares")
    assert scores.shape == (4,) and torch.isfinite(scores).all() and not scores.requires_grad
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(model.score(pixels, ["two red squares"] * 4), scores, atol=1e-4, rtol=1e-4)
    assert model.score(images[:1], ["two red squares"]).shape == (1,)


@pytest.mark.parametrize("name", ["aesthetic", "pickscore", "hpsv2"])
def test_score_pixels_is_differentiable(name, clip_dir, head_path):
    model = load_reward_model(name, path=clip_dir, head_path=head_path)
    assert model.differentiable
    pixels = (torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_()
    scores = model.score_pixels(pixels, ["a red circle", "three blue squares"])
    assert scores.shape == (2,) and scores.requires_grad
    scores.sum().backward()
    assert pixels.grad.shape == pixels.shape and pixels.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.parameters())  # frozen: gradients reach only the pixels


def test_pickscore_and_hpsv2_equal_the_hand_computation(clip_dir):
    model, tokenizer = CLIPModel.from_pretrained(clip_dir), AutoTokenizer.from_pretrained(clip_dir)
    images, prompts = _images(3), ["a red circle", "two green squares", "a red circle"]
    image, text = _hand_features(model, tokenizer, images, prompts)
    cos = (image * text).sum(-1)
    pick = load_reward_model("pickscore", path=clip_dir).score(images, prompts)
    torch.testing.assert_close(pick, model.logit_scale.exp().detach() * cos, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(load_reward_model("hpsv2", path=clip_dir).score(images, prompts), cos,
                               atol=1e-5, rtol=1e-4)


def test_aesthetic_is_the_head_on_the_normalised_image_embedding(clip_dir, tmp_path):
    head_file = save_tiny_aesthetic_head(tmp_path / "head.pth", input_dim=PROJ, seed=3)  # the .pth format too
    scorer = load_reward_model("aesthetic", path=clip_dir, head_path=head_file)
    model, tokenizer = CLIPModel.from_pretrained(clip_dir), AutoTokenizer.from_pretrained(clip_dir)
    images = _images(3)
    image, _ = _hand_features(model, tokenizer, images, ["x"] * 3)
    state = torch.load(head_file, weights_only=True)
    x = image
    for i in (0, 2, 4, 6, 7):  # Linear layers; the Dropouts (1, 3, 5) are identities in eval
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    torch.testing.assert_close(scorer.score(images, "ignored"), x[:, 0], atol=1e-5, rtol=1e-4)


def test_jpeg_rewards_are_the_file_sizes():
    images = _images(3)
    sizes = jpeg_size_kb(images)
    assert torch.equal(JpegReward().score(images, ""), torch.from_numpy(-sizes))
    assert torch.equal(load_reward_model("jpeg-incompressibility").score(images, ""), torch.from_numpy(sizes))
    with pytest.raises(NotImplementedError, match="not differentiable"):
        JpegReward().score_pixels(torch.zeros(1, 3, 8, 8), "")


def test_missing_paths_are_one_line_errors_naming_path_and_option(clip_dir, head_path, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no path given \(set reward_model\.path"):
        load_reward_model("pickscore")
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*reward_model.path") as err:
        load_reward_model("hpsv2", path=missing)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="reward_model.head_path"):
        load_reward_model("aesthetic", path=clip_dir)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_reward_model("pickscore", path=tmp_path)  # a folder, but no model in it
    with pytest.raises(FileNotFoundError, match="reward_model.path"):
        load_reward_model("aesthetic", path=missing, head_path=head_path)


def test_bad_aesthetic_head_names_the_file(clip_dir, tmp_path):
    wrong_dim = save_tiny_aesthetic_head(tmp_path / "h768.safetensors", input_dim=768)  # ViT-L head on a tiny CLIP
    with pytest.raises(ValueError, match=rf"{wrong_dim.name}.*projection dim {PROJ}.*layers\.0\.weight"):
        load_reward_model("aesthetic", path=clip_dir, head_path=wrong_dim)
    bad_keys = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1, PROJ)}, bad_keys)
    with pytest.raises(ValueError, match="other.pth.*missing"):
        load_reward_model("aesthetic", path=clip_dir, head_path=bad_keys)


def test_unloadable_models_say_why(tmp_path):
    with pytest.raises(RewardModelUnavailable, match="transformers 5.x.*offline") as err:
        load_reward_model("imagereward", path=tmp_path)
    assert isinstance(err.value, NotImplementedError) and isinstance(err.value, ValueError)  # the CLI prints it
    checkpoint = tmp_path / "HPS_v2_compressed.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(ValueError, match="open_clip.*transformers CLIP folder"):
        load_reward_model("hpsv2", path=checkpoint)
    with pytest.raises(ValueError, match="unknown reward model 'clipscore'"):
        load_reward_model("clipscore")
