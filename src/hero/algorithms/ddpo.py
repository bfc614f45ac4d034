"""DDPO: Training Diffusion Models with Reinforcement Learning (Black et al., 2023), on the shared engine.

Per round: plain N(0, I) starting noise, one reward per image from the feedback source, and the DDPO update
(``policy_gradient_update``): for K sampled denoising steps of each trajectory,

    L = mean max(−A·ρ, −A·clip(ρ, 1 − c, 1 + c)),   ρ = π_θ(x_{t−1} | x_t) / π_old(x_{t−1} | x_t),

with A the per-batch standardised reward (clipped to ±5) and π_old the model that sampled the round.

The reward r_i is the source's graded score when it gives one (``RoundFeedback.scores``: the simulated
human's judge score, a reward function's value) and good = 1 / not good = 0 otherwise (a person in the web
page) or when ``ddpo.reward = "good"`` (the same binary signal HERO gets, for a like-for-like comparison).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hero.algorithms.base import LoraPolicy
from hero.distributed import SINGLE, Dist
from hero.feedback.base import RoundFeedback
from hero.policy_gradient import policy_gradient_update
from hero.rollout import Trajectories


def ddpo_rewards(feedback: RoundFeedback, use_scores: bool = True) -> torch.Tensor:
    """r_i: the graded scores when given (and wanted), else good as 1.0 / 0.0; (N,) fp32."""
    if use_scores and feedback.scores is not None:
        return torch.tensor(feedback.scores, dtype=torch.float32)
    if not feedback.good:
        raise ValueError("DDPO needs a reward per image: good/not-good marks or graded scores, not pairs")
    return torch.tensor(feedback.good, dtype=torch.float32)


class DDPOTrainer:
    """DDPO on the shared engine: rewards from the feedback source, clipped policy gradient on the LoRA."""

    name = "ddpo"

    def __init__(self, cfg, pipe, dist: Dist = SINGLE):
        self.cfg = cfg
        self.use_scores = cfg.ddpo.reward == "score"
        self.policy = LoraPolicy(cfg, pipe, dist=dist)
        self.model = self.policy.model  # the round loop samples with it
        self.best_image: np.ndarray | None = None

    def start_noise(self, round_index: int, n: int, generator: torch.Generator,
                    prompts: list[str] | None = None) -> torch.Tensor | None:
        return None  # plain N(0, I) every round: DDPO does not steer the starting noise

    def current_best_image(self) -> np.ndarray | None:
        # Kept only so a person sees the same page as with HERO; DDPO does not use the best pick.
        return self.best_image

    def learn(self, round_index: int, traj: Trajectories, feedback: RoundFeedback,
              generator: torch.Generator) -> dict[str, float]:
        t0 = time.perf_counter()
        if feedback.best is not None:
            self.best_image = traj.images[feedback.best]
        rewards = ddpo_rewards(feedback, self.use_scores)
        t1 = time.perf_counter()
        stats = policy_gradient_update(self.model, traj, rewards, self.policy.optimizer, self.policy.pg,
                                       generator, dist=self.policy.dist)
        t2 = time.perf_counter()
        return {**{f"pg_{k}": v for k, v in stats.items()}, "reward_std": float(rewards.std(unbiased=False)),
                "seconds_representation": t1 - t0, "seconds_update": t2 - t1}

    def save(self, folder: Path) -> None:
        self.policy.save(folder, {"best_image": self.best_image})

    def load(self, folder: Path) -> None:
        self.best_image = self.policy.load(folder)["best_image"]
