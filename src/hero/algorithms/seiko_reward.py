"""SEIKO's reward models: Bayesian linear (ridge) regression on frozen image features, with optimism.

Features φ are standardised with the mean and std of the first round's features (fixed from then on, so a
point's bonus only ever shrinks as data arrives) and get a constant 1 appended (the intercept); z denotes
that design row. With all feedback so far Z (n, d), y (n,) and ridge λ:

    A = ZᵀZ + λI,   ŵ = A⁻¹Zᵀy   (the posterior mean under w ~ N(0, σ²/λ·I), y ~ N(Zw, σ²))

- greedy:      r(x) = ŵᵀz
- ucb:         r(x) = ŵᵀz + c·√(zᵀA⁻¹z). A grows with every datum, so the bonus shrinks as data grows. (The
               seed code used a covariance that *grows* with the data, so its bonus did not shrink.)
- bootstrap:   K ridge fits on bootstrap resamples of the data; r(x) = mean_k + c·std_k of their predictions
- thompson:    one draw w ~ N(ŵ, c²·A⁻¹) per round (c plays σ); r(x) = wᵀz
- nonadaptive: greedy on the first round's feedback only (samples of the pretrained model), refitted never

Every r(x) is differentiable in φ(x): SEIKO backpropagates it through the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["VARIANTS", "RewardModel", "design", "fit_reward", "posterior_samples", "ridge_fit", "ucb_bonus"]

VARIANTS = ("nonadaptive", "greedy", "ucb", "bootstrap", "thompson")


def design(phi: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """z = [(φ − mean)/std, 1]: (N, D) → (N, D + 1), differentiable in φ."""
    z = (phi - mean.to(phi)) / std.to(phi)
    return torch.cat([z, torch.ones_like(z[:, :1])], dim=1)


def ridge_fit(z: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge: (ŵ = A⁻¹Zᵀy, A = ZᵀZ + λI), computed in float64."""
    z, y = z.double(), y.double()
    a = z.T @ z + lam * torch.eye(z.shape[1], dtype=torch.float64)
    return torch.linalg.solve(a, z.T @ y), a


def ucb_bonus(z: torch.Tensor, a_inv: torch.Tensor, c: float) -> torch.Tensor:
    """c·√(zᵀA⁻¹z) per row (N,), differentiable in z."""
    quad = torch.einsum("nd,de,ne->n", z, a_inv.to(z), z)
    return c * quad.clamp(min=1e-12).sqrt()


def posterior_samples(w_hat: torch.Tensor, a: torch.Tensor, sigma: float, n: int,
                      generator: torch.Generator) -> torch.Tensor:
    """n draws (n, d) of w ~ N(ŵ, σ²A⁻¹): ŵ + σ·L⁻ᵀξ with A = LLᵀ, ξ ~ N(0, I) (cov L⁻ᵀL⁻¹ = A⁻¹)."""
    chol = torch.linalg.cholesky(a.double())
    xi = torch.randn(a.shape[0], n, generator=generator, dtype=torch.float64)
    return (w_hat.double()[:, None] + sigma * torch.linalg.solve_triangular(chol.T, xi, upper=True)).T


@dataclass
class RewardModel:
    """A fitted SEIKO reward: ``weights`` (K, d) (K > 1 only for bootstrap), ``a_inv`` for UCB."""

    variant: str
    mean: torch.Tensor  # (D,) feature standardisation
    std: torch.Tensor
    weights: torch.Tensor  # (K, D + 1) float32
    c: float = 0.0
    a_inv: torch.Tensor | None = None  # (D + 1, D + 1), UCB only

    def predictions(self, phi: torch.Tensor) -> torch.Tensor:
        """(N, K) linear predictions of each weight vector."""
        return design(phi, self.mean, self.std) @ self.weights.to(phi).T

    def mean_reward(self, phi: torch.Tensor) -> torch.Tensor:
        """(N,) the estimate without optimism (ensemble mean for bootstrap)."""
        return self.predictions(phi).mean(dim=1)

    def bonus(self, phi: torch.Tensor) -> torch.Tensor:
        """(N,) the optimism added to the estimate: UCB's width, bootstrap's c·std, 0 otherwise."""
        if self.variant == "ucb":
            return ucb_bonus(design(phi, self.mean, self.std), self.a_inv, self.c)
        if self.variant == "bootstrap" and self.weights.shape[0] > 1:
            return self.c * self.predictions(phi).std(dim=1)
        return torch.zeros(len(phi), dtype=phi.dtype, device=phi.device)

    def __call__(self, phi: torch.Tensor) -> torch.Tensor:
        """(N,) the optimistic reward the fine-tuning maximises, differentiable in φ."""
        return self.mean_reward(phi) + self.bonus(phi)


def fit_reward(variant: str, phi: torch.Tensor, y: torch.Tensor, rounds: torch.Tensor, lam: float, c: float,
               ensemble_size: int, generator: torch.Generator) -> RewardModel:
    """The round's reward model from all feedback so far: φ (n, D), y (n,), the round of each datum (n,)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SEIKO variant {variant!r}; one of {', '.join(VARIANTS)}")
    first = rounds == rounds.min()
    mean, std = phi[first].mean(dim=0), phi[first].std(dim=0, unbiased=False).clamp(min=1e-6)
    if variant == "nonadaptive":
        phi, y = phi[first], y[first]
    z = design(phi, mean, std)
    w_hat, a = ridge_fit(z, y, lam)
    if variant == "bootstrap":
        picks = [torch.randint(0, len(z), (len(z),), generator=generator) for _ in range(ensemble_size)]
        weights = torch.stack([ridge_fit(z[i], y[i], lam)[0] for i in picks])
    elif variant == "thompson":
        weights = posterior_samples(w_hat, a, c, 1, generator)
    else:
        weights = w_hat[None]
    a_inv = torch.linalg.inv(a).float() if variant == "ucb" else None
    return RewardModel(variant, mean, std, weights.float(), c, a_inv)
