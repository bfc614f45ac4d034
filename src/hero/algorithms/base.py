"""What the engine's round loop needs from an algorithm, and the state every one of them shares."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from hero.distributed import SINGLE, Dist
from hero.feedback.base import RoundFeedback
from hero.likelihood import LikelihoodConfig
from hero.lora import add_lora, save_lora
from hero.models.denoiser import Denoiser
from hero.models.families import denoiser_for
from hero.models.loading import resolve_precision
from hero.policy_gradient import make_optimizer
from hero.precision import Precision
from hero.rollout import Trajectories
from hero.runs.atomic import atomic_torch_save


class Algorithm(Protocol):
    name: str
    model: Denoiser  # the model it trains, with the run's precision: the round loop samples with it
    # Optional: "good_best" (the default when absent) or "pairs". A "pairs" algorithm (D3PO) also has
    # comparison_pairs(n) -> [(i, j), ...], the image pairs the round loop asks the source to compare.
    feedback_kind: str
    # Optional: relabels, {image: hero.runs.feedback_log.Relabel} of the judgements the last learn() asked of a
    # source itself (HERD); the round loop writes them to the feedback log before the round's checkpoint.

    def start_noise(self, round_index: int, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """z_T for this round's images, or None for plain N(0, I) noise. A method that learns from prompt sets
        (``config.PROMPT_SET_ALGOS``) also takes ``prompts=`` (each image's prompt) in a prompt-set run."""

    def current_best_image(self) -> np.ndarray | None:
        """The image the person may keep as best (shown beside the new round), if any."""

    def learn(self, round_index: int, traj: Trajectories, feedback: RoundFeedback,
              generator: torch.Generator) -> dict[str, float]:
        """Learn from one judged round; return metrics, including seconds_representation and seconds_update."""

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...


# The LoRA's layers when ``lora.targets`` is "auto": the likelihood methods train every timestep of a judged image
# and need the adapter at every resolution (docs/learning.md, "LoRA coverage"); the policy-gradient methods keep the
# papers' attention-only adapter.
AUTO_TARGETS = {"raft": "wide", "kto": "wide", "nft": "wide"}


def lora_targets(cfg) -> str | list[str]:
    """The LoRA target preset or module list of a TrainConfig ("auto": the method's own, ``AUTO_TARGETS``)."""
    targets = cfg.lora.targets
    if targets != "auto":
        return targets
    if cfg.algo == "hero" and cfg.hero.update == "likelihood":
        return "wide"  # HERO with the likelihood update trains as RAFT does
    return AUTO_TARGETS.get(cfg.algo, "attention")


def round_generator(seed: int, round_index: int, stream: int) -> torch.Generator:
    """A generator for one purpose (stream) in one round: resumable without saving RNG state."""
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + round_index * 101 + stream)


def keeps_only_images(cfg) -> bool:
    """Whether the method of a TrainConfig learns from the final images alone (no policy-gradient ratio)."""
    return cfg.keeps_only_images()


def rollout_kwargs(cfg, training: bool = True) -> dict:
    """A TrainConfig's sampler settings as keyword arguments of ``hero.rollout.rollout``.

    ``sampler.compile`` applies to an evaluation (``training=False``) and to the rounds of a method that keeps only
    the images; a rollout whose log-probs a policy update re-evaluates stays eager, so that its ratio is exact.
    ``pg.sampled_uncond`` keeps the unconditional half's outputs of such a rollout for its update.
    """
    s = cfg.sampler
    compile_ = s.compile and (not training or keeps_only_images(cfg))
    keep_uncond = training and cfg.pg.sampled_uncond and not keeps_only_images(cfg)
    return dict(guidance_scale=s.guidance_scale, num_steps=s.steps, eta=s.eta, batch_size=s.batch_size,
                height=s.resolution, width=s.resolution, compile=compile_, keep_uncond=keep_uncond)


def likelihood_config(cfg, with_base: bool) -> LikelihoodConfig:
    """The likelihood update's settings from a TrainConfig's ``likelihood`` section."""
    s = cfg.likelihood
    rejected = cfg.algo == "raft" and s.rejected == "unconditional"  # KTO and NFT use the not-good images already
    return LikelihoodConfig(steps=s.steps_per_round, batch_size=s.batch_size, min_snr_gamma=s.min_snr_gamma,
                            cond_dropout=s.cond_dropout, rejected_unconditional=rejected,
                            max_grad_norm=s.max_grad_norm, with_base=with_base, lr=s.lr,
                            lr_schedule=s.lr_schedule, random_flip=s.random_flip,
                            guidance_scale=cfg.sampler.guidance_scale if s.guided else 1.0,
                            sampled_states=s.sampled_states, average_last=s.average_last)


class LoraPolicy:
    """The trainable part every algorithm shares: the family's ``Denoiser`` at the run's precision, a LoRA on its
    network and the AdamW optimiser."""

    def __init__(self, cfg, pipe, dist: Dist = SINGLE, lr: float | None = None):
        """``dist``: the processes every update averages its gradients over (``SINGLE``: this one);
        ``lr``: the optimiser's rate when not ``lora.lr`` (the likelihood methods have their own)."""
        self.pipe, self.dist = pipe, dist
        # How every network call runs, visible here ("auto" as hero.train resolves it, for a trainer made directly).
        attention = "matmul" if cfg.memory.attention == "matmul" else "auto"
        self.model = denoiser_for(pipe, Precision.named(resolve_precision(cfg.precision, cfg.device), attention))
        # The policy-gradient settings, for the methods that use them. A prompt set standardises its advantages per
        # prompt (DDPO's per-prompt statistics, within the round): an easy prompt does not drown a hard one.
        self.pg = cfg.pg.model_copy(update={"per_prompt_advantages": True}) if cfg.prompt_set else cfg.pg
        self.lr = cfg.lora.lr if lr is None else lr
        add_lora(self.model.network, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                 targets=self.model.lora_targets(lora_targets(cfg)))
        self.optimizer = make_optimizer(self.model.network, self.lr)

    def state_dict(self) -> dict:
        return {"lora": get_peft_model_state_dict(self.model.network), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        set_peft_model_state_dict(self.model.network, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self, folder: Path, extra: dict) -> None:
        """LoRA in diffusers format (for users) + everything needed to resume (for us), each atomically."""
        save_lora(self.pipe, folder / "lora")
        atomic_torch_save({**self.state_dict(), **extra}, folder / "state.pt")

    def load(self, folder: Path) -> dict:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        self.load_state_dict(state)
        return state
