"""RAFT: Reward rAnked FineTuning (Dong et al., TMLR 2023), with a person's good marks as the ranking.

RAFT alternates sampling, ranking by reward, and fine-tuning on the accepted samples with the model's own
training loss. Here the "reward ranking" is the judgement itself: after each round, the LoRA is fine-tuned on
every image judged good so far (the best included) with the denoising loss, so each judgement is used in every
later round and directly raises the likelihood of what the person accepted (``hero.likelihood``):

    L(θ) = E_{x₀ ∈ good, t, ε} [ ℓ_θ(x₀, t, ε) + λ·‖f_θ(x_t, t, c) − f_ref(x_t, t, c)‖²_w ],

where the second term (λ = ``likelihood.base_weight``) keeps the model near the base so that it does not
collapse onto the few images it was shown: it is the per-step KL between the two models' reverse steps, up to a
constant factor, on the same noised inputs (the regulariser of DPOK, Fan et al., NeurIPS 2023).

Plain N(0, I) starting noise every round. The images judged not good are not used by default (see
``hero.algorithms.kto`` and ``hero.algorithms.nft`` for methods that learn from them too). With
``likelihood.rejected = "unconditional"`` they are trained as well, on the empty prompt's conditioning: classifier-
free guidance, f_∅ + g·(f_c − f_∅), then steps from what the not-good images look like towards what the good ones
do, as a negative prompt would (the sampler already guides at g = 2).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hero.algorithms.base import LoraPolicy, likelihood_config
from hero.distributed import SINGLE, Dist
from hero.feedback.base import RoundFeedback
from hero.likelihood import DenoisingErrors, ImagePool, likelihood_update
from hero.rollout import Trajectories


def raft_loss(errors: DenoisingErrors, labels: torch.Tensor, base_weight: float) -> torch.Tensor:
    """mean ℓ_θ + λ·mean ‖f_θ − f_ref‖² over a batch of good images (``labels`` unused: all are good)."""
    loss = errors.model.mean()
    if base_weight > 0:
        loss = loss + base_weight * errors.to_base.mean()
    return loss


class RaftTrainer:
    """RAFT on the shared engine: the denoising loss on every image judged good so far, pulled towards the base."""

    name = "raft"

    def __init__(self, cfg, pipe, dist: Dist = SINGLE, with_base: bool | None = None):
        """``with_base``: run the base model in each step (default: when the pull towards it is on)."""
        self.cfg, self.settings = cfg, cfg.likelihood
        self.policy = LoraPolicy(cfg, pipe, dist=dist, lr=self.settings.lr)
        self.model = self.policy.model  # the round loop samples with it
        with_base = self.settings.base_weight > 0 if with_base is None else with_base
        self.update = likelihood_config(cfg, with_base=with_base)
        self.pool = ImagePool(keep_states=self.update.sampled_states > 0)
        self.best_image: np.ndarray | None = None

    def start_noise(self, round_index: int, n: int, generator: torch.Generator,
                    prompts: list[str] | None = None) -> torch.Tensor | None:
        return None  # plain N(0, I): RAFT does not steer the starting noise

    def current_best_image(self) -> np.ndarray | None:
        return self.best_image  # shown beside the next round in the page; RAFT trains on it as a good image

    def learn(self, round_index: int, traj: Trajectories, feedback: RoundFeedback,
              generator: torch.Generator) -> dict[str, float]:
        t0 = time.perf_counter()
        if not feedback.good:
            raise ValueError("RAFT learns from good/not-good marks, not from pairwise preferences")
        self.pool.add_round(traj, feedback.good, feedback.best)
        if feedback.best is not None:
            self.best_image = traj.images[feedback.best]
        candidates = self.candidates()
        t1 = time.perf_counter()
        stats = likelihood_update(self.model, self.pool, candidates, self.policy.optimizer, self.update,
                                  self.loss, generator, dist=self.policy.dist)
        t2 = time.perf_counter()
        return {**{f"lik_{k}": v for k, v in stats.items()}, "pool_good": int(self.pool.labels().sum()),
                "pool_size": len(self.pool), "seconds_representation": t1 - t0, "seconds_update": t2 - t1}

    def candidates(self) -> torch.Tensor:
        """The pool indices a training batch is drawn from: RAFT's are the good images (every judged image with
        ``likelihood.rejected = "unconditional"``: the not-good ones on the empty prompt)."""
        if self.update.rejected_unconditional:
            return torch.arange(len(self.pool))
        return torch.nonzero(self.pool.labels()).flatten()

    def loss(self, errors: DenoisingErrors, labels: torch.Tensor) -> torch.Tensor:
        return raft_loss(errors, labels, self.settings.base_weight)

    def save(self, folder: Path) -> None:
        self.policy.save(folder, {"pool": self.pool.state_dict(), "best_image": self.best_image})

    def load(self, folder: Path) -> None:
        state = self.policy.load(folder)
        self.pool.load_state_dict(state["pool"])
        self.best_image = state["best_image"]
