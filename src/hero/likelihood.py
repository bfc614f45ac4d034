"""Likelihood updates on the judged images themselves: the denoising loss, with a pull towards the base model.

A diffusion model's training loss is (a weighted form of) its negative ELBO, so lowering it on an image raises
that image's likelihood (Ho et al., NeurIPS 2020). The methods built on it here (``hero.algorithms.raft``,
``hero.algorithms.kto``) need only the judged images' final latents x₀ and their prompt embeddings, not the
trajectories, so every step of the noise schedule is trained, and no step's σ matters.

For a judged image x₀ with conditioning c, a timestep t ~ U{0, …, T−1} and ε ~ N(0, I):

    x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε,
    ℓ_θ(x₀, t, ε) = w(t)·mean ‖f_θ(x_t, t, c) − y‖²,

with y the target of the model's own parameterisation (ε; v = √ᾱ·ε − √(1−ᾱ)·x₀; or x₀) and w(t) min-SNR-γ
weighting (Hang et al., ICCV 2023), the built-in model's pretraining loss. The pull towards the base model is
ℓ_base = w(t)·mean ‖f_θ(x_t, t, c) − f_ref(x_t, t, c)‖² on the same x_t: for two Gaussian reverse steps with
the same σ the KL between them is proportional to this squared difference of predictions, as in DPOK's KL
regulariser (Fan et al., NeurIPS 2023).

The forward process is the model family's (``Denoiser.noised``, ``training_target``, ``loss_weight``,
``training_timesteps``): the above for the DDPM-trained UNets; for a rectified-flow model (SD 3)
x_σ = (1 − σ)·x₀ + σ·ε with σ ~ U(0, 1), target v = ε − x₀ and weight 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hero.distributed import SINGLE, Dist
from hero.models.ddim import min_snr_weight, noised, prediction_target
from hero.models.denoiser import Denoiser
from hero.models.families import as_denoiser
from hero.policy_gradient import clip_and_step
from hero.rollout import Trajectories

__all__ = ["DenoisingErrors", "ImagePool", "LikelihoodConfig", "denoising_errors", "implied_noise",
           "likelihood_update", "min_snr_weight", "mirrored", "noised", "prediction_target", "with_sampled_states"]


@dataclass
class DenoisingErrors:
    """Per-sample (B,) terms on one batch of noised judged images; ``model`` carries gradients."""

    model: torch.Tensor  # ℓ_θ: the weighted denoising error of the model being trained
    base: torch.Tensor | None = None  # ℓ_ref: the same error of the base model (no gradient)
    to_base: torch.Tensor | None = None  # w(t)·mean ‖f_θ − f_ref‖²: the pull towards the base model
    # The raw terms, for losses that combine the two predictions before the error (DiffusionNFT):
    prediction: torch.Tensor | None = None  # f_θ(x_t) (B, ...), with gradients
    base_prediction: torch.Tensor | None = None  # f_ref(x_t), no gradient
    target: torch.Tensor | None = None  # y, the parameterisation's target
    weight: torch.Tensor | None = None  # w(t) (B,)


def denoising_errors(model: Denoiser, x0: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     gamma: float | None, with_base: bool, uncond: torch.Tensor | None = None,
                     guidance_scale: float = 1.0) -> DenoisingErrors:
    """ℓ_θ per sample, and with ``with_base`` the base model's ℓ_ref and the distance to its prediction.

    Args:
        model: the trainer's ``Denoiser``: its network carries the (trainable) adapter, the base model is the same
            network with the adapter off (``base_model``), both run at ``model.precision``; its forward process
            (``noised``, ``training_target``, ``loss_weight``) is the family's.
        x0, cond, noise, t: judged latents (B, ...), their conditioning (B, L, D), ε and timesteps (B,).
        gamma: min-SNR γ of the loss weighting (None: plain MSE).
        with_base: also run the base model (one more forward pass, without gradients).
        uncond, guidance_scale: with the empty prompt's conditioning (B, L, D) and a scale > 1, the prediction
            trained (and compared with the base's) is the guided one, f_∅ + g·(f_c − f_∅), the one the sampler
            steps with; by default the conditional f_c.
    """
    x_t = model.noised(x0, noise, t)
    t = t.to(x0.device)
    weight = model.loss_weight(t, gamma).to(x0.device)
    target = model.training_target(x0, noise, t)
    dims = tuple(range(1, x0.ndim))
    errors = DenoisingErrors(model=torch.zeros(0), target=target, weight=weight)

    def predict() -> torch.Tensor:
        if uncond is not None and guidance_scale > 1.0:
            return model.prediction(x_t, t, cond, uncond, guidance_scale)
        return model.output(x_t, t, cond)

    if with_base:
        with torch.no_grad(), model.base_model():
            ref = predict()
        errors.base = weight * ((ref - target) ** 2).mean(dim=dims)
        errors.base_prediction = ref
    out = predict()
    errors.prediction = out
    errors.model = weight * ((out - target) ** 2).mean(dim=dims)
    if with_base:
        errors.to_base = weight * ((out - ref) ** 2).mean(dim=dims)
    return errors


@dataclass
class LikelihoodConfig:
    """Settings of a likelihood update (one per round), shared by RAFT and Diffusion-KTO."""

    steps: int = 300  # optimiser steps per round
    batch_size: int = 16
    min_snr_gamma: float | None = 5.0
    cond_dropout: float = 0.0
    rejected_unconditional: bool = False  # not-good images are trained on the empty prompt's conditioning
    max_grad_norm: float = 1.0
    with_base: bool = True  # compute the base model's terms (the pull towards it, KTO's reference)
    lr: float | None = None  # the peak rate (None: leave the optimiser's as it is)
    lr_schedule: str = "constant"  # or "cosine": from lr to 0 over the round's steps
    random_flip: bool = False  # mirror each drawn image left-right with probability 1/2
    guidance_scale: float = 1.0  # > 1: train the guided prediction the sampler steps with (one more forward)
    sampled_states: float = 0.0  # share of a batch noised to its own sampled state (``implied_noise``)
    average_last: float = 0.0  # > 0: the round ends on the mean of this share of its last iterates (SWA)


def step_lr(cfg: LikelihoodConfig, step: int) -> float | None:
    """The rate of optimiser step ``step`` (0-based) of a round: constant, or a half cosine from cfg.lr to 0."""
    if cfg.lr is None or cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(cfg.steps, 1)))


class IterateAverage:
    """The running mean of a set of parameters' iterates; ``apply`` writes it into them.

    Stochastic weight averaging (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima"): the mean of a
    constant-rate walk's last iterates, rather than wherever its last step happened to land.
    """

    def __init__(self, params: list[torch.Tensor]):
        self.params, self.mean, self.count = params, None, 0

    def add(self) -> None:
        """Fold the parameters' current values into the mean."""
        self.count += 1
        with torch.no_grad():
            if self.mean is None:
                self.mean = [p.detach().clone() for p in self.params]
            else:
                for m, p in zip(self.mean, self.params, strict=True):
                    m.add_(p.detach() - m, alpha=1.0 / self.count)

    def apply(self) -> None:
        """Set the parameters to the mean of the iterates added (nothing when none was)."""
        if self.mean is None:
            return
        with torch.no_grad():
            for m, p in zip(self.mean, self.params, strict=True):
                p.copy_(m)


def likelihood_update(model: Denoiser, pool: ImagePool, candidates: torch.Tensor, optimizer: torch.optim.Optimizer,
                      cfg: LikelihoodConfig, loss_fn: Callable[[DenoisingErrors, torch.Tensor], torch.Tensor],
                      generator: torch.Generator, dist: Dist = SINGLE) -> dict[str, float]:
    """``cfg.steps`` optimiser steps, each on a batch drawn uniformly (with replacement) from ``candidates``.

    Args:
        model: the trainer's ``Denoiser`` (its network carries the trainable adapter; its precision is used), or a
            bare pipeline (fp32).
        pool: the judged images; ``candidates`` (int64) are the pool indices a batch may hold.
        optimizer: over the adapter's parameters; steps go through ``policy_gradient.clip_and_step`` (grad-norm
            clip, the fp16 loss scale, the data-parallel average).
        cfg: steps, batch size, loss weighting, conditioning dropout, whether to run the base model; with
            ``average_last`` > 0 the round ends on the mean of its last ``round(steps * average_last)`` iterates.
        loss_fn: (the batch's DenoisingErrors, its labels (B,) bool) → a scalar loss.
        generator: draws the batches, timesteps and noise (a resumed round draws the same).
    Returns the mean loss, ℓ_θ and distance to the base model over the steps, and the last grad norm.
    """
    model = as_denoiser(model)
    device = model.network.device
    labels = pool.labels()
    stats: dict[str, list[float]] = {"loss": [], "model_error": [], "to_base": [], "grad_norm": []}
    optimizer.zero_grad(set_to_none=True)
    # The data-parallel processes take the same steps, so each one's mean is the same.
    average = IterateAverage([p for group in optimizer.param_groups for p in group["params"]])
    first_averaged = cfg.steps - round(cfg.steps * cfg.average_last)
    for step in range(cfg.steps if len(candidates) else 0):
        if (lr := step_lr(cfg, step)) is not None:
            for group in optimizer.param_groups:  # set every step, so a resumed round restarts from the peak
                group["lr"] = lr
        idx = candidates[torch.randint(len(candidates), (cfg.batch_size,), generator=generator)]
        x0, cond = pool.batch(idx, cfg.cond_dropout, generator,
                              unconditional=~labels[idx] if cfg.rejected_unconditional else None)
        t = model.training_timesteps(len(idx), generator)
        noise = torch.randn(x0.shape, generator=generator)
        if cfg.sampled_states > 0:
            t, noise = with_sampled_states(model, pool, idx, x0, t, noise, cfg.sampled_states, generator)
        if cfg.random_flip:  # the image and its noise together, so that a sampled state stays that image's
            x0, noise = mirrored(torch.cat([x0, noise], dim=1), generator).split(x0.shape[1], dim=1)
        uncond = pool.unconditional(idx).to(device) if cfg.guidance_scale > 1.0 else None
        errors = denoising_errors(model, x0.to(device), cond.to(device), noise.to(device), t, cfg.min_snr_gamma,
                                  cfg.with_base, uncond=uncond, guidance_scale=cfg.guidance_scale)
        loss = loss_fn(errors, labels[idx].to(device))
        loss.backward()
        stats["grad_norm"].append(clip_and_step(optimizer, cfg.max_grad_norm, dist, model.precision.scaler))
        stats["loss"].append(loss.item())
        stats["model_error"].append(errors.model.mean().item())
        if errors.to_base is not None:
            stats["to_base"].append(errors.to_base.mean().item())
        if step >= first_averaged:
            average.add()
    average.apply()
    out = {k: float(sum(v) / len(v)) if v else float("nan") for k, v in stats.items()}
    return {**out, "steps": len(stats["loss"])}


def implied_noise(model: Denoiser, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The ε with ``model.noised(x0, ε, t) == x_t``: the forward process is affine in x₀ and ε,
    x_t = a(t)·x₀ + b(t)·ε (a = √ᾱ, b = √(1 − ᾱ) for the DDPM UNets; 1 − σ and σ for a rectified flow)."""
    a = model.noised(torch.ones_like(x0), torch.zeros_like(x0), t)
    b = model.noised(torch.zeros_like(x0), torch.ones_like(x0), t)
    return (x_t - a * x0) / b


def with_sampled_states(model: Denoiser, pool: ImagePool, idx: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor, share: float,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, ε) of a batch with a ``share`` of its images noised to the state the sampler itself passed through on
    the way to them (a random step's x_t and timestep, ``ImagePool(keep_states=True)``), the rest as drawn.

    Fresh noise teaches the good images' distribution from any x_t; a sampled state teaches the step the sampler
    took from where it actually was when it drew a good image, which is where a layout (a count) is decided.
    """
    use = torch.rand(len(idx), generator=generator) < share
    if not use.any():
        return t, noise
    x_t, t_sampled = pool.sampled_state(idx[use], generator)
    t, noise = t.clone(), noise.clone()
    t[use] = t_sampled.to(t.dtype)
    noise[use] = implied_noise(model, x0[use], x_t, t_sampled).to(noise.dtype)
    return t, noise


def mirrored(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each latent (N, C, H, W) flipped left-right with probability 1/2: a mirrored good image is as good for
    prompts without "left" or "right" (diffusers' training scripts' ``--random_flip``). Flipping a VAE latent
    approximates flipping its image (the encoder is convolutional); for a pixel-space model it is exact."""
    flip = torch.rand(len(x0), generator=generator) < 0.5
    return torch.where(flip.view(-1, *([1] * (x0.ndim - 1))), x0.flip(-1), x0)


@dataclass
class ImagePool:
    """Every judged image's final latent x₀, label and prompt, gathered over rounds (CPU, fp32).

    Prompt embeddings are stored once per distinct prompt, not per image: a one-prompt run keeps one pair.
    ``keep_states``: also keep each image's sampled states x_t (T per image, ``likelihood.sampled_states``).
    """

    latents: list[torch.Tensor] = field(default_factory=list)  # per round (n, C, H, W)
    good: list[torch.Tensor] = field(default_factory=list)  # per round (n,) bool
    prompts: list[str] = field(default_factory=list)  # per image, in order
    embeds: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # prompt → (cond, uncond)
    # Every round's latents in one tensor, made once per round added rather than at each of a round's 300 steps.
    _stacked: torch.Tensor | None = field(default=None, repr=False, compare=False)
    keep_states: bool = False
    states: list[torch.Tensor] = field(default_factory=list)  # per round (n, T, C, H, W): x_t before each step
    timesteps: list[torch.Tensor] = field(default_factory=list)  # per round (T,): the sampler's

    def add_round(self, traj: Trajectories, good: list[bool], best: int | None) -> None:
        """Store a judged round; the best image counts as good (a person picks it as the one to aim at)."""
        labels = torch.tensor(good, dtype=torch.bool)
        if len(labels) != len(traj):
            raise ValueError(f"{len(labels)} marks for {len(traj)} images")
        if best is not None:
            labels[best] = True
        self.latents.append(traj.final_latents.detach().float().cpu())
        if self.keep_states:
            self.states.append(traj.latents[:, :-1].detach().float().cpu())
            self.timesteps.append(traj.timesteps.detach().cpu())
        self._stacked = None
        self.good.append(labels)
        for i, p in enumerate(traj.prompts):
            self.prompts.append(p)
            if p not in self.embeds:
                self.embeds[p] = (traj.prompt_embeds[i].detach().cpu(), traj.negative_prompt_embeds[i].detach().cpu())

    def __len__(self) -> int:
        return len(self.prompts)

    def labels(self) -> torch.Tensor:
        """(N,) bool over every image so far: True = judged good (or best)."""
        return torch.cat(self.good) if self.good else torch.zeros(0, dtype=torch.bool)

    def batch(self, idx: torch.Tensor, cond_dropout: float, generator: torch.Generator,
              unconditional: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x₀, conditioning) of the images ``idx``; each conditioning is the empty prompt's with probability
        ``cond_dropout`` (so the unconditional branch that guidance subtracts learns the images too), and always
        where ``unconditional`` (B,) bool is True."""
        if self._stacked is None or len(self._stacked) != len(self):
            self._stacked = torch.cat(self.latents)
        x0 = self._stacked[idx]
        drop = torch.rand(len(idx), generator=generator) < cond_dropout
        if unconditional is not None:
            drop |= unconditional.cpu()
        cond = torch.stack([self.embeds[self.prompts[i]][int(d)] for i, d in zip(idx.tolist(), drop.tolist(),
                                                                                 strict=True)])
        return x0, cond

    def sampled_state(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """For each image ``idx``, one of its sampled states x_t (B, C, H, W) at a uniformly drawn step, and that
        step's timestep (B,)."""
        if not self.keep_states or sum(len(s) for s in self.states) != len(self):
            raise ValueError("this pool keeps no sampled states: make it with ImagePool(keep_states=True) before "
                             "its first round")
        rounds = torch.cat([torch.full((len(s),), r) for r, s in enumerate(self.states)])
        offsets = torch.tensor([0] + [len(s) for s in self.states]).cumsum(0)
        x_t, t = [], []
        for i in idx.tolist():
            r = int(rounds[i])
            step = int(torch.randint(len(self.timesteps[r]), (1,), generator=generator))
            x_t.append(self.states[r][i - int(offsets[r]), step])
            t.append(self.timesteps[r][step])
        return torch.stack(x_t), torch.stack(t)

    def unconditional(self, idx: torch.Tensor) -> torch.Tensor:
        """The empty prompt's conditioning of the images ``idx`` (B, L, D), as the sampler guided them."""
        return torch.stack([self.embeds[self.prompts[i]][1] for i in idx.tolist()])

    def state_dict(self) -> dict:
        return {"latents": self.latents, "good": self.good, "prompts": self.prompts, "embeds": self.embeds,
                "keep_states": self.keep_states, "states": self.states, "timesteps": self.timesteps}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self._stacked = None
