"""DDPO core: advantage and clipped-loss maths by hand, and one update on a tiny pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from hero.config import PolicyGradientSettings
from hero.lora import add_lora
from hero.models.families import denoiser_for
from hero.policy_gradient import clipped_surrogate_loss, make_optimizer, policy_gradient_update, standardise_advantages
from hero.rollout import rollout, step_log_prob


def test_standardise_advantages_by_hand():
    # mean 2.5, population std √1.25
    s = math.sqrt(1.25)
    expected = torch.tensor([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s])
    torch.testing.assert_close(standardise_advantages([1, 2, 3, 4]), expected)
    torch.testing.assert_close(standardise_advantages([1, 2, 3, 4], clip=1.0), expected.clamp(-1, 1))
    # Per prompt: a -> mean 2, std 1; b -> mean 15, std 5; the lone "c" keeps its batch-level value.
    rewards, prompts = [1, 3, 10, 20, 8], ["a", "a", "b", "b", "c"]
    adv = standardise_advantages(rewards, prompts)
    batch = standardise_advantages(rewards)
    torch.testing.assert_close(adv[:4], torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    torch.testing.assert_close(adv[4], batch[4])
    assert torch.equal(standardise_advantages([2.0, 2.0, 2.0]), torch.zeros(3))  # no spread, no NaN


def test_clipped_surrogate_loss_by_hand():
    ratios = torch.tensor([1.5, 0.5, 1.0, 1.00005], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 2.0, 1.0], dtype=torch.float64)
    logp_old = torch.zeros(4, dtype=torch.float64)
    logp_new = ratios.log().requires_grad_(True)
    loss = clipped_surrogate_loss(logp_new, logp_old, adv, clip_range=0.2)
    # per element max(−Aρ, −A·clip(ρ, 0.8, 1.2)): max(−1.5, −1.2), max(0.5, 0.8), −2, −1.00005
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 0.8 - 2.0 - 1.00005) / 4, dtype=torch.float64))
    loss.backward()
    # Clipped elements carry no gradient; the others get −A·ρ/N (d ρ / d logp = ρ).
    torch.testing.assert_close(logp_new.grad, torch.tensor([0.0, 0.0, -0.5, -1.00005 / 4], dtype=torch.float64))


def test_make_optimizer_needs_lora(tiny_pixel_pipeline):
    with pytest.raises(ValueError, match="add_lora"):
        make_optimizer(tiny_pixel_pipeline.unet, lr=3e-4)


def _surrogate(pipe, traj, adv, clip_range):
    """The clipped loss over every sample and every step (no grad)."""
    with torch.no_grad():
        losses = [clipped_surrogate_loss(step_log_prob(denoiser_for(pipe), traj, range(len(traj)), i),
                                         traj.log_probs[:, i], adv, clip_range) for i in range(traj.num_steps)]
    return torch.stack(losses).mean().item()


def test_update_changes_only_lora_and_reduces_the_loss(tiny_pixel_pipeline):
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet, rank=2, alpha=2)
    cfg = PolicyGradientSettings(clip_range=0.05, timesteps_per_traj=4, batch_size=2, grad_accum=2, min_sigma=0.0)
    traj = rollout(pipe, ["a red circle", "a blue square", "a red circle", "big"], num_steps=4, guidance_scale=3.0,
                   seed=0)
    rewards = [1.0, 0.0, 0.7, 0.2]
    adv = standardise_advantages(rewards)
    before_loss = _surrogate(pipe, traj, adv, cfg.clip_range)
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    text_before = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()}

    stats = policy_gradient_update(pipe, traj, rewards, make_optimizer(pipe.unet, lr=1e-3), cfg)

    assert stats["grad_steps"] == 1 and stats["backward_passes"] == 2 * 4  # 2 minibatches x K=4, accumulated
    assert abs(stats["loss"]) < 1e-5 and stats["approx_kl"] == 0.0 and stats["clipfrac"] == 0.0  # ratio 1 at start
    assert stats["grad_norm"] > 0
    changed = {n for n, p in pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    assert all(torch.equal(p, text_before[n]) for n, p in pipe.text_encoder.named_parameters())
    after_loss = _surrogate(pipe, traj, adv, cfg.clip_range)
    assert after_loss < before_loss - 1e-4, (before_loss, after_loss)


def test_update_counts_follow_the_config(tiny_pixel_pipeline):
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet)
    traj = rollout(pipe, ["a", "big", "a red circle", "left", "right"], num_steps=3, guidance_scale=1.0, seed=1)
    cfg = PolicyGradientSettings(timesteps_per_traj=5, batch_size=2, grad_accum=1, inner_epochs=2,
                                 per_prompt_advantages=True, min_sigma=0.0)
    stats = policy_gradient_update(pipe, traj, [0.1, 0.5, 0.2, 0.9, 0.3], make_optimizer(pipe.unet, lr=3e-4), cfg)
    # 5 samples -> minibatches of 2, 2, 1 -> 3 optimizer steps per epoch; K is capped at T = 3.
    assert stats["grad_steps"] == 2 * 3 and stats["backward_passes"] == 2 * 3 * 3
    assert all(math.isfinite(v) for v in stats.values())


def test_near_deterministic_steps_are_never_trained(tiny_pixel_pipeline):
    """tiny-shapes at 20 steps: the last DDIM step has σ ≈ 0.0064 (under one uint8 level); the others ≥ 0.07."""
    from types import SimpleNamespace

    from hero.models.families import denoiser_for
    from hero.models.tiny_shapes import sampling_scheduler
    from hero.policy_gradient import accumulation_schedule, trainable_steps

    tiny_pixel_pipeline.scheduler = sampling_scheduler()  # the built-in model's schedule, on a tiny network
    model = denoiser_for(tiny_pixel_pipeline)
    timesteps = model.timesteps(20, 1.0)
    sigmas = model.sigmas(timesteps, 1.0)
    assert sigmas[-1] < 2 / 255 < 0.07 < sigmas[:-1].min()
    traj = SimpleNamespace(timesteps=timesteps, eta=1.0)
    keep = trainable_steps(model, traj, 0.01)
    assert keep.tolist() == list(range(19))
    cfg = PolicyGradientSettings(timesteps_per_traj=19, batch_size=4, grad_accum=2, inner_epochs=3)
    drawn = {int(s) for group in accumulation_schedule(16, keep, cfg, torch.Generator().manual_seed(0))
             for _, steps, _ in group for s in steps}
    assert drawn == set(range(19))  # every other step is trained, the last one never
    everything = {int(s) for group in accumulation_schedule(16, 20, cfg, torch.Generator().manual_seed(0))
                  for _, steps, _ in group for s in steps}
    assert 19 in everything  # min_sigma = 0 (the paper's DDPO): all steps, as before
    # All steps allowed: the same draws as the integer form (a run with min_sigma = 0 is unchanged).
    a = list(accumulation_schedule(8, 20, cfg, torch.Generator().manual_seed(3)))
    b = list(accumulation_schedule(8, torch.arange(20), cfg, torch.Generator().manual_seed(3)))
    assert all(torch.equal(x[1], y[1]) for ga, gb in zip(a, b, strict=True) for x, y in zip(ga, gb, strict=True))
    with pytest.raises(ValueError, match="pg.min_sigma=2.0 leaves no denoising step"):
        trainable_steps(model, traj, 2.0)


def test_the_last_step_dominates_the_gradient_unless_left_out(tiny_pixel_pipeline):
    """Why the floor: at a fresh LoRA the ∇ log p of the σ ≈ 0.006 step is far larger than any other step's."""
    from hero.models.tiny_shapes import sampling_scheduler

    pipe = tiny_pixel_pipeline
    pipe.scheduler = sampling_scheduler()
    add_lora(pipe.unet)
    traj = rollout(pipe, ["a red circle"] * 2, num_steps=20, guidance_scale=1.0, seed=0)
    norms = []
    for s in range(20):
        pipe.unet.zero_grad(set_to_none=True)
        step_log_prob(denoiser_for(pipe), traj, [0, 1], s).mean().backward()
        norms.append(math.sqrt(sum(float((p.grad ** 2).sum()) for p in pipe.unet.parameters() if p.grad is not None)))
    assert norms[19] > 3 * max(norms[:19])
    assert norms[19] ** 2 > 0.8 * sum(n ** 2 for n in norms)  # over 80% of Σ_s ‖∇ log p_s‖²


def test_update_on_the_conditional_half_only(tiny_pixel_pipeline):
    """pg.sampled_uncond: every pass runs the conditional half alone, starts at ratio 1 and still learns."""
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet, rank=2, alpha=2)
    traj = rollout(pipe, ["a red circle", "a blue square", "a red circle", "big"], num_steps=4, guidance_scale=3.0,
                   seed=0, keep_uncond=True)
    cfg = PolicyGradientSettings(clip_range=0.05, timesteps_per_traj=4, batch_size=2, grad_accum=2, min_sigma=0.0,
                                 sampled_uncond=True)
    rewards = [1.0, 0.0, 0.7, 0.2]
    adv = standardise_advantages(rewards)
    before_loss = _surrogate(pipe, traj, adv, cfg.clip_range)
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    stats = policy_gradient_update(pipe, traj, rewards, make_optimizer(pipe.unet, lr=1e-3), cfg)
    hook.remove()
    assert batches == [2] * 8  # 2 minibatches × 4 steps, each the conditional half of 2 trajectories
    assert stats["approx_kl"] < 1e-10 and stats["clipfrac"] == 0.0  # the sampled step again, up to rounding
    assert _surrogate(pipe, traj, adv, cfg.clip_range) < before_loss - 1e-4


def test_timesteps_in_one_pass_give_the_same_update(tiny_pixel_pipeline):
    """pg.batch_timesteps: a minibatch's K timesteps in one network pass, the same gradient and step."""
    pipe = tiny_pixel_pipeline
    add_lora(pipe.unet, rank=2, alpha=2)
    traj = rollout(pipe, ["a red circle", "a blue square", "a red circle", "big"], num_steps=4, guidance_scale=3.0,
                   seed=0)
    start = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if "lora_" in n}
    results = {}
    for fused in (False, True):
        with torch.no_grad():
            for n, p in pipe.unet.named_parameters():
                if n in start:
                    p.copy_(start[n])
        cfg = PolicyGradientSettings(clip_range=0.05, timesteps_per_traj=3, batch_size=2, grad_accum=2,
                                     min_sigma=0.0, batch_timesteps=fused)
        batches = []
        hook = pipe.unet.register_forward_pre_hook(lambda module, args, seen=batches: seen.append(len(args[0])))
        stats = policy_gradient_update(pipe, traj, [1.0, 0.0, 0.7, 0.2], make_optimizer(pipe.unet, lr=1e-3), cfg,
                                       generator=torch.Generator().manual_seed(3))
        hook.remove()
        results[fused] = (stats, batches, {n: p.detach().clone() for n, p in pipe.unet.named_parameters()
                                           if n in start})
    (plain, plain_batches, plain_after), (fused, fused_batches, fused_after) = results[False], results[True]
    # [uncond; cond] of a minibatch of 2 at one step, 6 times; or of 2 minibatches × K = 3 steps at once.
    assert plain_batches == [2 * 2] * 6 and fused_batches == [2 * (2 * 2 * 3)]
    assert plain["network_passes"] == 6 and fused["network_passes"] == 1
    assert plain["backward_passes"] == fused["backward_passes"] == 6
    assert fused["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
    for n in start:
        torch.testing.assert_close(fused_after[n], plain_after[n], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(plain_after[n], start[n]) for n in start)
