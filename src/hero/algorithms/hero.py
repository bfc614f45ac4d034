"""HERO: Human-feedback Efficient Reinforcement learning for Online diffusion model fine-tuning (ICLR 2025).

Per round (the paper, Hiranaka et al., ICLR 2025; docs/hero.md):
1. feedback-guided generation: after round 0, β·B images start from the best image's z_T and the rest from
   uniformly chosen good images' z_T, each perturbed as z = √(1−ε²)·z_cond + ε·ξ;
2. the person marks good images and one best (later rounds: among the good ones and the current best);
3. feedback-aligned representation learning: an embedding CNN E and a projection head g, triplet loss with
   anchor = best, positive = good, negative = not good, d(u, v) = (1 − cos(u, v))/2 *per sample*, margin 0.5;
4. reward r_i = (1 + cos(E f_i, E f_best))/2 over final denoised latents f;
5. the DDPO update of the LoRA weights with those rewards.

Beyond the paper (``hero.update``, ``hero.noise``, ``hero.unjudged``; docs/learning.md): the update is by default
the likelihood update of RAFT (``hero.likelihood``) on the judged-good images (measured to learn more per judgement
on the built-in model; ``hero.update=policy_gradient`` is step 5), the starting noise may be plain,
and each round may sample unjudged images that the learned reward scores at no feedback cost. With the likelihood
update, an unjudged image joins the training set when its reward clears the threshold at which the round's own
judgements, scored by the encoder *before* it learns from them (so they are held out), were at least
``hero.unjudged_precision`` good (``precision_threshold``).

What E sees (``hero.encoder_input``): the paper's CNN over the final latent f ("latent"), or, our default, an
MLP over frozen features φ(f) of the pretrained UNet's mid block ("features", ``hero.models.features``). On the
built-in model a CNN over 32×32 pixels cannot learn to count from ~100 labels (held-out AUC of its reward,
good vs not good: 0.50–0.56), while the MLP over φ reaches 0.45–0.85, mean 0.67–0.75, from the same labels
(docs/hero.md, benchmarks/reward_auc.py).

Two bugs of the reference code are fixed here and tested: the cosine is taken per sample (not across the
batch), and the "best" pick is an index into the round's own images (or "keep the current best"), never a
position in a filtered list.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hero.algorithms.base import LoraPolicy, likelihood_config, rollout_kwargs
from hero.algorithms.raft import raft_loss
from hero.distributed import SINGLE, Dist
from hero.feedback.base import RoundFeedback
from hero.likelihood import DenoisingErrors, ImagePool, likelihood_update
from hero.models.features import FrozenFeatures
from hero.policy_gradient import policy_gradient_update
from hero.prompts import group_slices
from hero.rollout import Trajectories, rollout


class TripletEncoder(nn.Module):
    """E_θ: a small CNN over a final denoised latent (C, H, W) → an embedding; g_θ: a projection head."""

    def __init__(self, in_channels: int = 3, embed_dim: int = 64, proj_dim: int = 32, width: int = 32):
        super().__init__()
        self.embed = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, embed_dim),
        )
        self.head = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, proj_dim))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """E_θ(f): the embedding the reward is computed on."""
        return self.embed(latents.float())

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """g_θ(E_θ(f)): the projection the triplet loss is computed on."""
        return self.head(self.embed(latents.float()))


class FeatureTripletEncoder(TripletEncoder):
    """E_θ as a small MLP over frozen image features φ(f) (``hero.models.features``) instead of a CNN over f itself."""

    def __init__(self, in_dim: int, embed_dim: int = 64, proj_dim: int = 32, width: int = 256):
        nn.Module.__init__(self)
        self.embed = nn.Sequential(nn.Linear(in_dim, width), nn.SiLU(), nn.Linear(width, embed_dim))
        self.head = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, proj_dim))


def cosine_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """d(u, v) = (1 − cos(u, v))/2 per row: (N, D), (N, D) → (N,). (The reference code used dim=0.)"""
    return (1.0 - F.cosine_similarity(u, v, dim=-1)) / 2.0


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 0.5) -> torch.Tensor:
    """Mean over triplets of max(0, d(a, p) − d(a, n) + margin)."""
    return F.relu(cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + margin).mean()


def hero_rewards(encoder: TripletEncoder, latents: torch.Tensor, best_latent: torch.Tensor,
                 space: str = "embedding") -> torch.Tensor:
    """r_i = (1 + cos(E f_i, E f_best))/2 in [0, 1], (N,); ``space="projection"`` compares g(E f) instead."""
    embed = encoder.project if space == "projection" else encoder
    with torch.no_grad():
        e = embed(latents)
        e_best = embed(best_latent[None]).expand_as(e)
        return (1.0 + F.cosine_similarity(e, e_best, dim=-1)) / 2.0


def guided_noise(n: int, best_noise: torch.Tensor, good_noises: torch.Tensor, beta: float, eps: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Feedback-guided z_T: round(β·n) from the best's z_T, the rest from uniformly chosen good z_T, each
    perturbed as √(1−ε²)·z + ε·ξ (variance-preserving, so the result is still ~N(0, I) per element)."""
    n_best = int(round(beta * n))
    if len(good_noises) == 0:
        n_best = n
    picks = torch.randint(0, max(1, len(good_noises)), (n - n_best,), generator=generator)
    cond = torch.cat([best_noise[None].expand(n_best, *best_noise.shape),
                      good_noises[picks] if n - n_best else best_noise[None][:0]])
    xi = torch.randn(cond.shape, generator=generator)
    return math.sqrt(1.0 - eps**2) * cond + eps * xi


def precision_threshold(scores: torch.Tensor, good: torch.Tensor, precision: float) -> float:
    """The lowest score t such that at least ``precision`` of the judged images scoring ≥ t are good (inf: none).

    Args:
        scores: (N,) rewards of judged images, from a reward that has not learned from them.
        good: (N,) bool, their marks.
        precision: the share of good images required above the threshold.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    hits = good[order].float().cumsum(0) / torch.arange(1, len(order) + 1)
    ok = torch.nonzero(hits >= precision - 1e-9).flatten()
    return float(scores[order][ok[-1]]) if len(ok) else math.inf


@dataclass
class FeedbackMemory:
    """Final latents with their labels gathered so far, and the current best (latent + starting noise)."""

    # "latents": the encoder's inputs, per round (n, ...): final latents (n, C, H, W) or their features (n, D)
    latents: list[torch.Tensor] = field(default_factory=list)
    good: list[torch.Tensor] = field(default_factory=list)  # per round (n,) bool
    best_latent: torch.Tensor | None = None
    best_noise: torch.Tensor | None = None
    good_noises: torch.Tensor | None = None  # z_T of the latest round's good images

    def add_round(self, latents: torch.Tensor, start_noise: torch.Tensor, good: list[bool], best: int | None) -> None:
        """Store a judged round. ``best`` indexes this round's images; None keeps the current best."""
        g = torch.tensor(good, dtype=torch.bool)
        if best is not None:
            if not 0 <= best < len(good):
                raise IndexError(f"best={best} is not an image of this round (0..{len(good) - 1})")
            self.best_latent, self.best_noise = latents[best].clone(), start_noise[best].clone()
        elif self.best_latent is None:
            raise ValueError("the first round needs a best image")
        self.latents.append(latents.detach().cpu())
        self.good.append(g)
        if g.any():  # keep the previous good set when a round has no good image
            self.good_noises = start_noise[g].clone()

    def triplet_data(self, last_round_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(positives, negatives) latents from the latest round or from all rounds."""
        rounds = range(len(self.latents) - 1, len(self.latents)) if last_round_only else range(len(self.latents))
        pos = [self.latents[r][self.good[r]] for r in rounds]
        neg = [self.latents[r][~self.good[r]] for r in rounds]
        return torch.cat(pos), torch.cat(neg)

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("latents", "good", "best_latent", "best_noise", "good_noises")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def train_encoder(encoder: TripletEncoder, optimizer: torch.optim.Optimizer,
                  memory: FeedbackMemory | list[FeedbackMemory], *, epochs: int, margin: float, batch_size: int,
                  last_round_only: bool, generator: torch.Generator) -> dict[str, float]:
    """Triplet training: anchor = best, positive = a good image, negative = a not-good image.

    A prompt set passes one memory per prompt: each triplet is drawn within a prompt (its best, its good and
    not-good images), one prompt after another in each epoch, so one encoder learns across the prompts.
    """
    memories = [memory] if isinstance(memory, FeedbackMemory) else list(memory)
    data = []
    for m in memories:
        pos, neg = m.triplet_data(last_round_only)
        if len(pos) and len(neg):
            data.append((m.best_latent[None], pos, neg))
    if not data or epochs <= 0:
        return {"triplet_loss": float("nan"), "triplets": 0}
    losses = []
    for _ in range(epochs):
        for anchor, pos, neg in data:
            losses += _triplet_epoch(encoder, optimizer, anchor, pos, neg, margin, batch_size, generator)
    per_epoch = max(1, len(losses) // epochs)
    return {"triplet_loss": float(sum(losses[-per_epoch:]) / per_epoch),
            "triplets": sum(max(len(p), len(q)) for _, p, q in data)}


def _triplet_epoch(encoder: TripletEncoder, optimizer: torch.optim.Optimizer, anchor: torch.Tensor,
                   pos: torch.Tensor, neg: torch.Tensor, margin: float, batch_size: int,
                   generator: torch.Generator) -> list[float]:
    """One pass in which every positive and every negative appears at least once, paired at random."""
    n = max(len(pos), len(neg))
    p_idx = torch.cat([torch.randperm(len(pos), generator=generator) for _ in range(math.ceil(n / len(pos)))])[:n]
    n_idx = torch.cat([torch.randperm(len(neg), generator=generator) for _ in range(math.ceil(n / len(neg)))])[:n]
    losses = []
    for lo in range(0, n, batch_size):
        p, q = pos[p_idx[lo: lo + batch_size]], neg[n_idx[lo: lo + batch_size]]
        a = encoder.project(anchor).expand(len(p), -1)
        loss = triplet_loss(a, encoder.project(p), encoder.project(q), margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


class HeroTrainer:
    """HERO on the shared engine: feedback-guided noise, triplet-trained reward, a likelihood or DDPO update."""

    name = "hero"

    def __init__(self, cfg, pipe, dist: Dist = SINGLE):
        self.cfg, self.settings = cfg, cfg.hero
        likelihood = self.settings.update == "likelihood"
        self.policy = LoraPolicy(cfg, pipe, dist=dist, lr=cfg.likelihood.lr if likelihood else None)
        self.model = self.policy.model  # the round loop samples with it
        # The likelihood update's training set: judged images (good = judged good or best) + accepted unjudged ones.
        self.likelihood = likelihood_config(cfg, with_base=cfg.likelihood.base_weight > 0) if likelihood else None
        self.pool = ImagePool(keep_states=self.likelihood.sampled_states > 0) if likelihood else None
        if self.settings.encoder_input == "features":
            self.features = FrozenFeatures(pipe)
            self.encoder = FeatureTripletEncoder(self.features.dim, embed_dim=self.settings.embed_dim)
        else:
            self.features = None
            self.encoder = TripletEncoder(self.model.latent_shape(1)[1], embed_dim=self.settings.embed_dim)
        # Standardisation of φ, fixed from the first round so rewards of later rounds stay comparable.
        self.feature_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.encoder_opt = torch.optim.Adam(self.encoder.parameters(), lr=self.settings.encoder_lr)
        # Per prompt (one for a one-prompt run): its best and good images' latents and starting noises.
        self.memories: dict[str, FeedbackMemory] = {}
        self.best_image: np.ndarray | None = None

    @property
    def memory(self) -> FeedbackMemory:
        """The one prompt's memory (a one-prompt run)."""
        return self.memory_for(self.cfg.prompt)

    def has_best(self) -> bool:
        """Whether any prompt has a best image yet (from round 1 on)."""
        return any(m.best_latent is not None for m in self.memories.values())

    def memory_for(self, prompt: str) -> FeedbackMemory:
        return self.memories.setdefault(prompt, FeedbackMemory())

    def start_noise(self, round_index: int, n: int, generator: torch.Generator,
                    prompts: list[str] | None = None) -> torch.Tensor | None:
        """Guided z_T from each image's prompt's best and good images; a prompt without a best yet (its first
        round) gets N(0, I). None (all plain) before any best, or with ``hero.noise = plain``."""
        if self.settings.noise == "plain":
            return None
        if prompts is None:
            return None if self.memory.best_noise is None else self.guided_noise(n, generator)
        known = [m.best_noise for m in self.memories.values() if m.best_noise is not None]
        if not known:
            return None
        parts = []
        for prompt, part in group_slices(prompts):
            k = part.stop - part.start
            m = self.memories.get(prompt)
            parts.append(torch.randn((k, *known[0].shape), generator=generator) if m is None or m.best_noise is None
                         else self.guided_noise(k, generator, prompt))
        return torch.cat(parts)

    def guided_noise(self, n: int, generator: torch.Generator, prompt: str | None = None) -> torch.Tensor:
        """Feedback-guided z_T from the current best and good images of ``prompt`` (default: the run's one prompt;
        also used to evaluate "guided")."""
        memory = self.memory if prompt is None else self.memory_for(prompt)
        good = memory.good_noises
        if good is None:
            good = memory.best_noise[None][:0]
        return guided_noise(n, memory.best_noise, good, self.settings.beta, self.settings.noise_eps, generator)

    def rewards(self, inputs: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """r_i = (1 + cos(E f_i, E f_best))/2 against the best of image i's own prompt (every prompt judged has one:
        its first round always picks a best); images of a prompt never judged get the neutral 0.5."""
        groups = group_slices(prompts)
        space = self.settings.reward_space
        if len(groups) == 1 and groups[0][0] in self.memories:  # one prompt: the whole batch at once, as before
            return hero_rewards(self.encoder, inputs, self.memories[groups[0][0]].best_latent, space)
        out = torch.full((len(inputs),), 0.5)
        for prompt, part in groups:
            best = self.memories[prompt].best_latent if prompt in self.memories else None
            if best is not None:
                out[part] = hero_rewards(self.encoder, inputs[part], best, space)
        return out

    def current_best_image(self) -> np.ndarray | None:
        return self.best_image

    def learn(self, round_index: int, traj: Trajectories, feedback: RoundFeedback,
              generator: torch.Generator) -> dict[str, float]:
        # Unjudged samples; the likelihood update has no reward to accept them by before round 1.
        t_sampling = time.perf_counter()
        wanted = self.settings.unjudged and (self.pool is None or self.has_best())
        extra = self.sample_unjudged(round_index, generator) if wanted else None
        t0 = time.perf_counter()
        inputs = self.encoder_inputs(traj.final_latents)
        extra_inputs = None if extra is None else self.encoder_inputs(extra.final_latents)
        accepted, extra_stats = self.accept_unjudged(inputs, traj.prompts, feedback.good, extra_inputs,
                                                     None if extra is None else extra.prompts)  # before E learns
        self.remember(inputs, traj, feedback)
        enc = train_encoder(self.encoder, self.encoder_opt, list(self.memories.values()),
                            epochs=self.settings.encoder_epochs, margin=self.settings.margin,
                            batch_size=self.settings.encoder_batch_size,
                            last_round_only=self.settings.train_on == "round", generator=generator)
        rewards = self.rewards(inputs, traj.prompts)
        t1 = time.perf_counter()
        if self.pool is not None:
            self.pool.add_round(traj, feedback.good, feedback.best)
            if accepted is not None and accepted.any():
                self.pool.add_round(extra.subset(torch.nonzero(accepted).flatten()), [True] * int(accepted.sum()),
                                    None)
            stats = likelihood_update(self.model, self.pool, torch.nonzero(self.pool.labels()).flatten(),
                                      self.policy.optimizer, self.likelihood, self.likelihood_loss, generator,
                                      dist=self.policy.dist)
            prefix = "lik"
            extra_stats = {**extra_stats, "pool_good": int(self.pool.labels().sum()), "pool_size": len(self.pool)}
        else:
            batch, batch_rewards = traj, rewards
            if extra is not None:  # every unjudged sample, with its learned reward, joins the policy gradient
                extra_rewards = self.rewards(extra_inputs, extra.prompts)
                batch, batch_rewards = Trajectories.concat([traj, extra]), torch.cat([rewards, extra_rewards])
                extra_stats = {"unjudged_samples": len(extra)}
            stats = policy_gradient_update(self.model, batch, batch_rewards, self.policy.optimizer,
                                           self.policy.pg, generator, dist=self.policy.dist)
            prefix = "pg"
        t2 = time.perf_counter()
        good = torch.tensor(feedback.good)
        return {**enc, **extra_stats, **{f"{prefix}_{k}": v for k, v in stats.items()},
                "reward_good": float(rewards[good].mean()) if good.any() else float("nan"),
                "reward_not_good": float(rewards[~good].mean()) if (~good).any() else float("nan"),
                "seconds_unjudged_sampling": t0 - t_sampling,
                "seconds_representation": t1 - t0, "seconds_update": t2 - t1}

    def remember(self, inputs: torch.Tensor, traj: Trajectories, feedback: RoundFeedback) -> None:
        """Store the judged round in each prompt's memory (its best: ``feedback.best``, or a prompt set's per-prompt
        ``bests``)."""
        for prompt, part in group_slices(traj.prompts):
            if feedback.prompts is None:
                best = feedback.best
            else:
                best = next((b - part.start for b in feedback.bests if part.start <= b < part.stop), None)
            self.memory_for(prompt).add_round(inputs[part], traj.start_noise[part], feedback.good[part], best)
        if feedback.best is not None:
            self.best_image = traj.images[feedback.best]

    def sample_unjudged(self, round_index: int, generator: torch.Generator) -> Trajectories:
        """``hero.unjudged`` images nobody will judge, from the round's kind of starting noise; a prompt set's are
        spread evenly over the prompts judged so far."""
        n = self.settings.unjudged
        if self.cfg.prompt_set:
            judged = [p for p in self.cfg.prompt_list if p in self.memories] or self.cfg.prompt_list
            prompts = sorted((judged[i % len(judged)] for i in range(n)), key=judged.index)
            noise = self.start_noise(round_index, n, generator, prompts=prompts)
        else:
            prompts, noise = [self.cfg.prompt] * n, self.start_noise(round_index, n, generator)
        return rollout(self.model, prompts, generator=generator, start_noise=noise, **rollout_kwargs(self.cfg))

    def accept_unjudged(self, inputs: torch.Tensor, prompts: list[str], good: list[bool],
                        extra_inputs: torch.Tensor | None, extra_prompts: list[str] | None
                        ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Which unjudged samples join the likelihood update's training set, and the calibration's figures.

        Both the round's judged images and the unjudged ones are scored by the encoder as it was before this round
        (round 0 has none: nothing is accepted), so the threshold is set on judgements it has not learned from.
        """
        if extra_inputs is None or self.pool is None or not self.has_best():
            return None, {}
        judged = self.rewards(inputs, prompts)
        threshold = precision_threshold(judged, torch.tensor(good), self.settings.unjudged_precision)
        accepted = self.rewards(extra_inputs, extra_prompts) >= threshold
        return accepted, {"unjudged_threshold": threshold, "unjudged_accepted": int(accepted.sum())}

    def likelihood_loss(self, errors: DenoisingErrors, labels: torch.Tensor) -> torch.Tensor:
        return raft_loss(errors, labels, self.cfg.likelihood.base_weight)

    def encoder_inputs(self, final_latents: torch.Tensor) -> torch.Tensor:
        """What E sees: the final latents themselves, or their standardised frozen features φ."""
        if self.features is None:
            return final_latents
        phi = self.features.batched(final_latents)
        if self.feature_stats is None:
            self.feature_stats = (phi.mean(0), phi.std(0) + 1e-6)
        mean, std = self.feature_stats
        return (phi - mean) / std

    def save(self, folder: Path) -> None:
        self.policy.save(folder, {"encoder": self.encoder.state_dict(), "encoder_opt": self.encoder_opt.state_dict(),
                                  "memories": {p: m.state_dict() for p, m in self.memories.items()},
                                  "best_image": self.best_image,
                                  "feature_stats": self.feature_stats,
                                  "pool": None if self.pool is None else self.pool.state_dict()})

    def load(self, folder: Path) -> None:
        state = self.policy.load(folder)
        self.encoder.load_state_dict(state["encoder"])
        self.encoder_opt.load_state_dict(state["encoder_opt"])
        if "memory" in state:  # a checkpoint from before prompt sets: the one prompt's memory
            state["memories"] = {self.cfg.prompt: state["memory"]}
        self.memories = {}
        for prompt, memory in state["memories"].items():
            self.memory_for(prompt).load_state_dict(memory)
        self.best_image = state["best_image"]
        self.feature_stats = state.get("feature_stats")
        if self.pool is not None:
            self.pool.load_state_dict(state["pool"])
