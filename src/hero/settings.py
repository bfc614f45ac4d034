"""The config's sections for the sampler, the LoRA and each method (``hero.config.TrainConfig`` holds them).

Each is a pydantic model with ``extra="forbid"``: a mistyped key is an error naming it, never a silently ignored
setting. A new method's section goes here, and its field into ``TrainConfig``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """A config section: its keys are checked (an unknown one is an error naming it)."""

    # extra="forbid": a typo is an error, never a silently ignored setting.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), coerce_numbers_to_str=True)


class SamplerConfig(Section):
    """The stochastic sampler: steps, η and classifier-free guidance."""

    steps: int = Field(20, ge=1)
    eta: float = Field(1.0, ge=0.0)  # DDIM's η; for a flow model (SD 3) the SDE's noise level a (0.7: Flow-GRPO's)
    guidance_scale: float = Field(2.0, ge=0.0)
    resolution: int | None = Field(None, ge=8)  # pixels; None: the model's native size
    batch_size: int = Field(8, ge=1)  # images per denoising forward pass (memory, not results)
    # torch.compile the network for the samplings that keep only images (the evaluation, the likelihood methods'
    # rounds; hero.rollout): faster after a one-off compile, and never for a rollout a policy update re-evaluates.
    compile: bool = False


class LoraSettings(Section):
    """LoRA adapter on the UNet: its rank, scale, learning rate and which layers it reaches."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    lr: float = Field(3e-4, gt=0)
    # "attention" (the papers' adapter: to_q/k/v/out), "wide" (also resnets, time embedding, proj_in/out,
    # feed-forwards; hero.lora.TARGET_PRESETS), an explicit list of module-name suffixes, or "auto": the
    # method's own (wide for raft, kto and nft, attention for the policy-gradient methods; base.AUTO_TARGETS).
    targets: Literal["auto", "attention", "wide"] | list[str] = "auto"

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or not all(isinstance(t, str) and t.strip() for t in v)):
            raise ValueError("must be auto, attention, wide or a non-empty list of module names")
        return v


class PolicyGradientSettings(Section):
    """DDPO update (defaults: the HERO paper's)."""

    clip_range: float = Field(1e-4, gt=0)
    adv_clip: float = Field(5.0, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    timesteps_per_traj: int = Field(5, ge=1)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(4, ge=1)
    inner_epochs: int = Field(1, ge=1)
    per_prompt_advantages: bool = False
    # Steps with σ below this are never trained: their ∇ log p ∝ 1/σ swamps the gradient (docs/learning.md). 0.01
    # leaves out tiny-shapes' last step (σ = 0.0064, under one uint8 level); 0 trains every step.
    min_sigma: float = Field(0.01, ge=0.0)
    # True: the rollout keeps each step's unconditional-half output and the update re-runs only the conditional half
    # (half a pass's work; no gradient through the unconditional half, which the shared LoRA still moves). Off by
    # default, on in the demo preset (6 seeds there: higher and steadier than both halves; docs/speed.md).
    sampled_uncond: bool = False
    # True: a minibatch's K timesteps run as one batch of batch_size × K (the same gradient up to float rounding, K×
    # the activation memory); faster where a small batch leaves cores idle (2.5× more images/s at 40 than 8 on
    # tiny-shapes, 2 CPU threads; docs/speed.md). False: one timestep per pass, the papers' loop. Every policy update:
    # DDPO, HERD, HERO's, D3PO (winners and losers together) and DPOK.
    batch_timesteps: bool = False


class HeroSettings(Section):
    """HERO: feedback-guided noise and the feedback-aligned representation (triplet) learning."""

    beta: float = Field(0.5, ge=0.0, le=1.0)  # share of a round started from the best image's noise
    noise_eps: float = Field(0.1, ge=0.0, le=1.0)  # z = sqrt(1-eps^2) z_cond + eps xi
    margin: float = Field(0.5, ge=0.0)
    encoder_lr: float = Field(1e-5, gt=0)
    encoder_epochs: int = Field(200, ge=1)  # the reference code uses 500-5000 at batch 2048; ours is a small CNN
    train_on: Literal["all", "round"] = "all"  # all feedback so far, or only this round's
    embed_dim: int = Field(512, ge=1)  # the reference code's output_dim
    # The embedding net's input: "features" (an MLP on frozen UNet mid-block features) or "latent" (the paper's CNN)
    encoder_input: Literal["features", "latent"] = "features"
    encoder_batch_size: int = Field(2048, ge=1)  # triplets per encoder step (the paper's 2048)
    # Where the reward's cosine to the best is taken: "embedding" E(f) (the paper) or "projection" g(E(f)), the
    # space the triplet loss shapes (docs/hero.md: its held-out AUC is higher on the built-in model).
    reward_space: Literal["embedding", "projection"] = "embedding"
    # RAFT's denoising loss (``likelihood`` section) on the judged-good images and the accepted unjudged samples (the
    # default: 0.643 plain success over 3 seeds against the paper's DDPO update's ~0.56; docs/learning.md), or the
    # paper's DDPO update (``--preset hero-paper``); unjudged: samples per round scored by the learned reward, at no
    # feedback cost (docs/learning.md, "HERO with a likelihood update and unjudged samples").
    update: Literal["policy_gradient", "likelihood"] = "likelihood"
    noise: Literal["guided", "plain"] = "guided"  # starting noise of the rounds: feedback-guided, or N(0, I)
    unjudged: int = Field(0, ge=0)
    unjudged_precision: float = Field(0.9, gt=0.0, le=1.0)  # the share good above the threshold, on held-out marks


class DDPOSettings(Section):
    """DDPO: which per-image reward the policy gradient uses."""

    # "score": the source's graded score when it gives one (judge score, reward value), else good = 1 / 0;
    # "good": always good = 1 / not good = 0 (the same binary signal HERO gets from a person).
    reward: Literal["score", "good"] = "score"


class D3POSettings(Section):
    """D3PO: −log σ(β·(log ρ_w − log ρ_l)), ρ = clamp(π_θ/π_ref, 1 − c, 1 + c) per denoising step."""

    beta: float = Field(0.1, gt=0)
    ratio_clip: float = Field(0.1, gt=0, lt=1)


class DPOKSettings(Section):
    """DPOK: α·(clipped policy gradient with a value baseline) + β·KL to the pretrained model."""

    reward_weight: float = Field(10.0, gt=0)  # α: scales the advantage r − V (rewards in [0, 1] here)
    kl_weight: float = Field(0.01, ge=0)  # β on the ε-prediction MSE to the adapter-free UNet
    value_lr: float = Field(1e-3, gt=0)  # a small net refitted each round on few samples: a brisk rate
    value_epochs: int = Field(8, ge=0)  # passes over the round's (x_t, t, r) before the policy update
    value_batch_size: int = Field(64, ge=1)


class LikelihoodSettings(Section):
    """RAFT and Diffusion-KTO: the denoising loss on the judged images (``hero.likelihood``), per round."""

    lr: float = Field(2e-3, gt=0)  # their own rate (lora.lr is the policy-gradient methods')
    # "cosine": each round's steps anneal the rate from lr to 0, so the model sampled next is a low-rate iterate
    lr_schedule: Literal["constant", "cosine"] = "constant"
    steps_per_round: int = Field(300, ge=0)  # optimiser steps after each judged round
    batch_size: int = Field(16, ge=1)  # judged images per step, drawn with replacement
    base_weight: float = Field(0.5, ge=0)  # λ on the distance to the base model's prediction (0: no pull)
    cond_dropout: float = Field(0.0, ge=0.0, le=1.0)  # share of a batch trained on the empty prompt
    # RAFT only: "unconditional" also trains the not-good images on the empty prompt (guidance steps away from them)
    rejected: Literal["unused", "unconditional"] = "unused"
    min_snr_gamma: float | None = Field(5.0, gt=0)  # loss weighting (None: plain MSE)
    max_grad_norm: float = Field(1.0, gt=0)
    # Mirror each drawn image left-right half the time: twice the distinct images per judgement, for prompts whose
    # meaning a mirror keeps (not "left of", not text)
    random_flip: bool = False
    # Train the guided prediction f_∅ + g·(f_c − f_∅) at the sampler's guidance scale, the one the sampler steps with,
    # rather than the conditional f_c alone (twice the forward and backward work per step)
    guided: bool = False
    # Share of each batch noised to the image's own sampled state (a random step's x_t of the trajectory that drew
    # it, with the noise it implies) instead of fresh noise: the sampler's real states, where a layout is decided
    sampled_states: float = Field(0.0, ge=0.0, le=1.0)
    # Share of each round's last steps whose iterates are averaged into the weights the round ends on (stochastic
    # weight averaging): the model sampled next, and saved, is their mean rather than the last step's (0: the last)
    average_last: float = Field(0.0, ge=0.0, le=1.0)


class KtoSettings(Section):
    """Diffusion-KTO (experimental: leaves the base model within one round, docs/learning.md)."""

    # Scales ℓ_ref − ℓ_θ (~3e-3 here) into the sigmoid, saturating once |β·Δ| ≳ 4; 5000: Diffusion-DPO's for SD 1.5.
    beta: float = Field(5000.0, gt=0)
    good_weight: float = Field(1.0, gt=0)  # λ_D of KTO: weight of the good images' term
    bad_weight: float = Field(1.0, gt=0)  # λ_U: weight of the not-good images' term


class NftSettings(Section):
    """DiffusionNFT: the step from the base model, f± = f_ref ± β·(f_θ − f_ref) (``hero.algorithms.nft``)."""

    beta: float = Field(1.0, gt=0)  # 1: the paper's; smaller steps further from the base (like a guidance scale)


class HerdSettings(Section):
    """HERD: DDPO + hindsight replay of a round's failures, relabelled with what they show, in the next update."""

    # Share of a round's images examined for a relabel (at most); each examined image costs one feedback.
    replay_fraction: float = Field(0.25, ge=0.0, le=1.0)


class SeikoSettings(Section):
    """SEIKO: a ridge reward on frozen features with optimism, backpropagated through the sampler with a KL."""

    variant: Literal["nonadaptive", "greedy", "ucb", "bootstrap", "thompson"] = "ucb"
    ridge: float = Field(10.0, gt=0)  # λ of A = ΦᵀΦ + λI (features standardised by the first round's)
    c: float = Field(0.1, ge=0)  # optimism: UCB's c, bootstrap's c (mean + c·std), Thompson's posterior σ
    ensemble_size: int = Field(4, ge=2)  # bootstrap: ridge fits on resamples
    kl_weight: float = Field(1.0, ge=0)  # α on Σ_steps mean_d (μ_θ − μ_prev)²/2σ_t² to the previous round
    backprop_steps: int = Field(4, ge=1)  # K: the last K denoising steps carry gradients (capped at sampler.steps)
    updates_per_round: int = Field(8, ge=0)  # optimiser steps, each on a fresh differentiable rollout
    batch_size: int = Field(8, ge=1)  # images per differentiable rollout
