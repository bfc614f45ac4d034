"""DiffusionNFT (Zheng et al., "DiffusionNFT: Online Diffusion Reinforcement with Forward Process", 2025), in the
ε-/v-prediction form, on a person's good / not-good marks.

DiffusionNFT trains on the forward process, as pretraining does: a judged image x₀ is noised to x_t and the model's
prediction is regressed onto the target y of its parameterisation. It splits the data by reward r ∈ [0, 1] and
defines two implicit policies from the trained prediction f_θ and a frozen reference f_ref:

    f⁺ = (1 − β)·f_ref + β·f_θ,        f⁻ = (1 + β)·f_ref − β·f_θ,
    L(θ) = E_{x₀, t, ε} [ r·w(t)‖f⁺(x_t) − y‖² + (1 − r)·w(t)‖f⁻(x_t) − y‖² ].

The paper writes it for a flow-matching velocity. It holds unchanged for ε-, v- and x₀-prediction, because each is
affine in E[x₀ | x_t] for a fixed x_t and t (x_t = √ᾱ·x₀ + √(1−ᾱ)·ε), so minimising the weighted squared error at
x_t has the same solution in any of them. Writing Δ = f_θ − f_ref, the loss is w·‖β·s·Δ − (y − f_ref)‖² with
s = +1 for good and −1 for not-good images: the adapter regresses the signed residual of the base model. Where a
share p(x_t) of the judged images passing through x_t are good, the minimiser is

    f_θ* = f_ref + (1/β)·[ p·(E₊[y | x_t] − f_ref) − (1 − p)·(E₋[y | x_t] − f_ref) ],

a step towards what the good images denoise to and away from what the not-good ones do. Every quantity in it is
bounded, so, unlike Diffusion-KTO's sigmoid of an unbounded error gap, descending it cannot run away from the base:
f_ref is the reference model, and β sets the step. With β = 1 and judged images drawn from the base model itself
(f_ref = p·E₊ + (1 − p)·E₋), the step is 2p·(E₊ − f_ref): at p = ½ it lands on E₊; a smaller β steps further, as
a guidance scale would.

Choices here, where the paper's setting differs:
- The reference is the base model (the adapter off), not an EMA of the sampling policy: the base is already what
  every likelihood update here runs for its pull term, and a fixed reference keeps the step bounded across rounds.
- Every judged image so far is reused every round (``hero.likelihood.ImagePool``), as in RAFT; r is the person's
  mark (the best image counts as good). Plain N(0, I) starting noise.
"""

from __future__ import annotations

import torch

from hero.algorithms.raft import RaftTrainer
from hero.distributed import SINGLE, Dist
from hero.likelihood import DenoisingErrors


def nft_loss(errors: DenoisingErrors, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over the batch of r·w‖f⁺ − y‖² + (1 − r)·w‖f⁻ − y‖², f± = f_ref ± β·(f_θ − f_ref).

    Args:
        errors: one batch's raw terms: ``prediction`` f_θ (with grad), ``base_prediction`` f_ref, ``target`` y and
            ``weight`` w(t) (``denoising_errors(with_base=True)``).
        labels: (B,) bool (True = judged good) or float rewards r in [0, 1].
        beta: the step from the reference (DiffusionNFT's β > 0).
    """
    if errors.base_prediction is None:
        raise ValueError("DiffusionNFT needs the base model's prediction: compute the errors with with_base=True")
    reward = labels.float().view(-1, *([1] * (errors.prediction.ndim - 1)))
    delta = beta * (errors.prediction - errors.base_prediction)
    residual = errors.target - errors.base_prediction  # what the base model gets wrong on this x_t
    dims = tuple(range(1, errors.prediction.ndim))
    positive = ((delta - residual) ** 2).mean(dim=dims)  # ‖f⁺ − y‖²
    negative = ((delta + residual) ** 2).mean(dim=dims)  # ‖f⁻ − y‖²: f⁻ − y = −(Δ·β + (y − f_ref))
    r = reward.flatten()
    return (errors.weight * (r * positive + (1 - r) * negative)).mean()


class NftTrainer(RaftTrainer):
    """DiffusionNFT on the shared engine: RAFT's pool and update over every judged image, with the NFT loss."""

    name = "nft"

    def __init__(self, cfg, pipe, dist: Dist = SINGLE):
        super().__init__(cfg, pipe, dist, with_base=True)  # f_ref is part of the loss: always computed
        self.beta = cfg.nft.beta

    def candidates(self) -> torch.Tensor:
        """Every judged image: the not-good ones say which way not to step."""
        return torch.arange(len(self.pool))

    def loss(self, errors: DenoisingErrors, labels: torch.Tensor) -> torch.Tensor:
        return nft_loss(errors, labels, self.beta)
