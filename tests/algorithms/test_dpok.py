"""DPOK: the loss by hand, ε̂ from any prediction type, the KL to the adapter-free UNet, the value baseline, a run."""

import math
from types import SimpleNamespace

import pytest
import torch
from run_checks import assert_one_pass_is_the_same_update

from hero.algorithms.dpok import (
    DPOKTrainer,
    ValueNet,
    dpok_loss,
    dpok_update,
    step_terms,
    timestep_embedding,
    train_value,
    value_data,
)
from hero.config import PolicyGradientSettings, load_config
from hero.lora import add_lora, lora_parameters
from hero.models import load_pipeline
from hero.models.ddim import noise_from_output
from hero.models.families import denoiser_for
from hero.policy_gradient import make_optimizer
from hero.rollout import rollout
from hero.train import train

FAST = ["sampler.steps=4", "pg.timesteps_per_traj=2"]


def test_loss_by_hand():
    logp_old = torch.tensor([-1.0, -2.0])
    adv, kl = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    # Ratio 1: surrogate = −mean(A) = −0.5; KL term 0.1 · mean(kl) = 0.1.
    assert dpok_loss(logp_old, logp_old, adv, kl, 0.2, 0.1).item() == pytest.approx(-0.4)
    # Ratios 1.5 and 0.5, clip 0.2: max(−3, −2.4) = −2.4 and max(0.5, 0.8) = 0.8 → −0.8; no KL weight.
    logp = logp_old + torch.tensor([math.log(1.5), math.log(0.5)])
    assert dpok_loss(logp, logp_old, adv, kl, 0.2, 0.0).item() == pytest.approx(-0.8)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_noise_from_any_prediction_type(kind):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    abar = torch.tensor([0.9, 0.5, 0.1])
    a = abar.view(-1, 1, 1, 1)
    x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[kind]
    sched = SimpleNamespace(config=SimpleNamespace(prediction_type=kind))
    assert torch.allclose(noise_from_output(sched, out, x, abar), eps, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_pixel_pipeline", "tiny_sd_pipeline"])  # v- and ε-prediction
def test_kl_is_zero_for_the_identity_adapter_and_positive_after(name, request):
    pipe = request.getfixturevalue(name)
    add_lora(pipe.unet)
    traj = rollout(pipe, ["a red circle", "big"], guidance_scale=3.0, num_steps=3, seed=0)
    idx, steps = torch.tensor([0, 1]), torch.tensor([2, 0])
    logp, kl = step_terms(denoiser_for(pipe), traj, idx, steps)
    assert torch.equal(kl, torch.zeros(2))  # B = 0: the LoRA UNet *is* the pretrained one
    assert torch.equal(logp.detach(), traj.log_probs[idx, steps]) and logp.requires_grad  # ratio exactly 1
    with torch.no_grad():
        for p in lora_parameters(pipe):
            p.add_(0.1 * torch.randn_like(p))
    logp, kl = step_terms(denoiser_for(pipe), traj, idx, steps)
    assert (kl > 0).all() and kl.requires_grad
    assert all(p.requires_grad for p in lora_parameters(pipe))  # the adapter is back on, and trainable
    kl.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(pipe))


def test_the_trained_pass_can_take_the_unconditional_half_from_the_rollout(tiny_pixel_pipeline):
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet)
    traj = rollout(pipe, ["a red circle", "big"], guidance_scale=3.0, num_steps=3, seed=0, keep_uncond=True)
    idx, steps = torch.tensor([0, 1]), torch.tensor([2, 0])
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    logp, kl = step_terms(denoiser_for(pipe), traj, idx, steps, sampled_uncond=True)
    hook.remove()
    assert batches == [4, 2]  # the reference with both halves, the trained pass with the conditional half only
    # The sampled step again up to float rounding (the conditional half runs in a batch of its own).
    torch.testing.assert_close(logp.detach(), traj.log_probs[idx, steps], rtol=1e-5, atol=1e-5)
    assert (kl < 1e-10).all() and logp.requires_grad  # B = 0: still the pretrained UNet, up to the same rounding


def test_timesteps_in_one_pass_give_the_same_update(tiny_pixel_pipeline):
    """pg.batch_timesteps: every minibatch × K steps of an optimiser step in one pass, the same update."""
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet, rank=2, alpha=2)
    traj = rollout(pipe, ["a red circle", "big", "a blue square", "big"], guidance_scale=3.0, num_steps=4, seed=0)
    advantages = torch.tensor([[1.0, -0.5, 0.2, 0.0], [-1.0, 0.3, 0.1, 0.4], [0.5, 0.5, -0.2, 1.0],
                               [0.0, -1.0, 0.8, -0.3]])

    def update(fused: bool) -> dict[str, float]:
        cfg = PolicyGradientSettings(clip_range=0.05, timesteps_per_traj=3, batch_size=2, grad_accum=2,
                                     min_sigma=0.0, batch_timesteps=fused)
        return dpok_update(pipe, traj, advantages, make_optimizer(pipe.unet, lr=1e-3), cfg, 0.1,
                           torch.Generator().manual_seed(3))

    assert_one_pass_is_the_same_update(pipe.unet, update)


def test_value_baseline_reduces_mse():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 8, 8, generator=g)
    t = torch.randint(0, 1000, (128,), generator=g)
    r = torch.sigmoid(2 * x[:, 0].mean((1, 2)) * 4)  # a reward the latent determines
    value = ValueNet(3)
    assert torch.equal(value(x, t), torch.zeros(128))  # zero until trained
    stats = train_value(value, torch.optim.Adam(value.parameters(), lr=3e-3), x, t, r, epochs=30, batch_size=32,
                        generator=g)
    assert stats["value_mse_after"] < 0.5 * stats["value_mse_before"]
    assert ((r - value(x, t).detach()) ** 2).mean() < ((r - r.mean()) ** 2).mean()  # better than a constant
    assert timestep_embedding(t, 32).shape == (128, 32)


def test_advantages_use_the_value_at_every_step(tiny_pixel_pipeline):
    cfg = load_config(None, FAST, algo="dpok", prompt="a red circle", budget=4, images_per_round=4)
    trainer = DPOKTrainer(cfg, tiny_pixel_pipeline)
    traj = rollout(tiny_pixel_pipeline, ["a red circle"] * 3, guidance_scale=3.0, num_steps=4, seed=0)
    rewards = torch.tensor([0.1, 0.2, 0.9])
    x, t, r = value_data(traj, rewards)
    assert x.shape == (12, 3, 8, 8) and torch.equal(x[5], traj.latents[1, 1]) and t[5] == traj.timesteps[1]
    assert r[5] == pytest.approx(0.2)
    # An untrained value is 0: A = clip(α·r, ±5) with α = 10.
    assert torch.allclose(trainer.advantages(traj, rewards), torch.tensor([1.0, 2.0, 5.0])[:, None].expand(3, 4))


def test_short_run_writes_a_loadable_lora(tmp_path):
    cfg = load_config(None, FAST, algo="dpok", prompt="two red squares", budget=8, images_per_round=4,
                      out=str(tmp_path / "run"))
    run = train(cfg, show_progress=False)
    metrics = run.metrics()
    assert [m["round"] for m in metrics] == [0, 1]
    assert metrics[0]["dpok_kl"] == 0.0  # the first backward passes see the identity adapter
    assert all(m["value_mse_after"] < m["value_mse_before"] for m in metrics)
    pipe = load_pipeline("tiny-shapes")
    pipe.load_lora_weights(str(run.path / "lora"))
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())
    # The checkpoint carries the value net: a fresh trainer loads it.
    trainer = DPOKTrainer(cfg, load_pipeline("tiny-shapes"))
    trainer.load(run.checkpoint_dir(1))
    assert any(p.abs().sum() > 0 for p in trainer.value.body[-1].parameters())
