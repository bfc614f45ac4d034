"""Diffusion-KTO (Li et al., "Aligning Diffusion Models by Optimizing Human Utility", NeurIPS 2024).

KTO (Ethayarajh et al., 2024) learns from per-example binary labels, not pairs: a person's good / not-good marks
as they are. For a diffusion model the per-step log-ratio log π_θ/π_ref of a reverse step is, up to a positive
factor of t that β absorbs (as in Diffusion-DPO, Wallace et al., CVPR 2024), the difference of the two models'
denoising errors on the same noised image, so the implicit reward of a judged image x₀ is

    r_θ(x₀) = β·(ℓ_ref(x₀, t, ε) − ℓ_θ(x₀, t, ε)),

and the reference point is the KL between the two models, which for Gaussian steps of equal σ is the same
factor times ‖f_θ − f_ref‖²: Q = β·mean_batch w(t)·‖f_θ(x_t) − f_ref(x_t)‖² (no gradient). The loss, over batches
drawn from every judged image so far (``hero.likelihood``):

    good:      λ_D·(1 − σ(r_θ − Q)),      not good:  λ_U·(1 − σ(Q − r_θ)).

Good images are pushed to denoise better than the base model does, not-good ones worse; the sigmoid saturates
once an image is far from the reference, which keeps the model near the base without a separate term.
"""

from __future__ import annotations

import torch

from hero.algorithms.raft import RaftTrainer
from hero.distributed import SINGLE, Dist
from hero.likelihood import DenoisingErrors


def kto_loss(errors: DenoisingErrors, labels: torch.Tensor, beta: float, good_weight: float = 1.0,
             bad_weight: float = 1.0) -> torch.Tensor:
    """Mean over the batch of λ_D·(1 − σ(r − Q)) for good and λ_U·(1 − σ(Q − r)) for not-good images.

    Args:
        errors: the batch's ℓ_θ (with grad), ℓ_ref and ‖f_θ − f_ref‖²_w (``denoising_errors(with_base=True)``).
        labels: (B,) bool, True = judged good.
        beta: scale of the implicit reward r = β·(ℓ_ref − ℓ_θ) and of the reference point Q.
        good_weight, bad_weight: KTO's λ_D and λ_U.
    """
    reward = beta * (errors.base - errors.model)
    reference = (beta * errors.to_base.mean()).detach()  # KTO's z_ref: no gradient flows through it
    good = labels.float()
    value = good * good_weight * torch.sigmoid(reward - reference) + \
        (1 - good) * bad_weight * torch.sigmoid(reference - reward)
    return (good * good_weight + (1 - good) * bad_weight - value).mean()


class KtoTrainer(RaftTrainer):
    """Diffusion-KTO on the shared engine: RAFT's pool and update, with every judged image and the KTO loss."""

    name = "kto"

    def __init__(self, cfg, pipe, dist: Dist = SINGLE):
        super().__init__(cfg, pipe, dist, with_base=True)  # the base model is KTO's reference: always computed
        self.kto = cfg.kto

    def candidates(self) -> torch.Tensor:
        """Every judged image: the not-good ones are half of what KTO learns from."""
        return torch.arange(len(self.pool))

    def loss(self, errors: DenoisingErrors, labels: torch.Tensor) -> torch.Tensor:
        return kto_loss(errors, labels, self.kto.beta, self.kto.good_weight, self.kto.bad_weight)
