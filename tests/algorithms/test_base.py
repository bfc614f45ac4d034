"""The methods' shared pieces: which rollouts may sample through torch.compile."""

from __future__ import annotations

import pytest

from hero.algorithms import ALGORITHMS
from hero.algorithms.base import keeps_only_images, rollout_kwargs
from hero.config import IMAGE_ONLY_ALGOS, load_config


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_only_rollouts_no_update_reevaluates_are_compiled(algo):
    cfg = load_config(prompt="three green triangles", algo=algo, overrides=["sampler.compile=true"])
    assert rollout_kwargs(cfg, training=False)["compile"]  # an evaluation keeps only images
    # A policy update divides by the rollout's own log-probs: that rollout stays eager, so its ratio is exact.
    only_images = algo in IMAGE_ONLY_ALGOS or algo == "hero"  # HERO's default update is the likelihood one
    assert rollout_kwargs(cfg)["compile"] == only_images == keeps_only_images(cfg)
    off = load_config(prompt="three green triangles", algo=algo)
    assert not rollout_kwargs(off)["compile"] and not rollout_kwargs(off, training=False)["compile"]


def test_hero_with_the_policy_gradient_update_samples_eagerly():
    cfg = load_config(prompt="three green triangles", algo="hero",
                      overrides=["sampler.compile=true", "hero.update=policy_gradient"])
    assert not keeps_only_images(cfg) and not rollout_kwargs(cfg)["compile"]


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_only_a_log_prob_update_keeps_the_unconditional_half(algo):
    cfg = load_config(prompt="three green triangles", algo=algo, overrides=["pg.sampled_uncond=true"])
    assert rollout_kwargs(cfg)["keep_uncond"] == (not keeps_only_images(cfg))
    assert not rollout_kwargs(cfg, training=False)["keep_uncond"]  # an evaluation keeps only images
    assert not rollout_kwargs(load_config(prompt="three green triangles", algo=algo))["keep_uncond"]
