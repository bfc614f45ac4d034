"""Typed training config: defaults < YAML preset < keyword values < dotted overrides, checked by pydantic.

Every mistake is one ``ConfigError`` line naming the key, e.g. ``bad value for 'budget': -3 (must be > 0)``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hero.runs.atomic import atomic_write_text

__all__ = ["ConfigError", "D3POSettings", "DDPOSettings", "DPOKSettings", "HerdSettings", "SeikoSettings",
           "HeroSettings", "KtoSettings", "LikelihoodSettings", "LoraSettings", "PolicyGradientSettings",
           "PRESETS_DIR", "SamplerConfig",
           "TaskSettings", "TrainConfig", "WebSettings", "list_presets", "load_config", "parse_feedback", "save_config",
           "RewardModelSettings", "MemorySettings", "SINGLE_FILE_SUFFIXES"]

PRESETS_DIR = Path(__file__).parent / "presets"
# "jpeg" is DDPO's compressibility reward; the others are reward models loaded from reward_model.path (hero.rewards)
REWARDS = ("jpeg", "jpeg-incompressibility", "aesthetic", "pickscore", "hpsv2", "imagereward")
_REWARD_PATHS = {"aesthetic": ("path", "head_path"), "pickscore": ("path",), "hpsv2": ("path",)}
_DEVICE = re.compile(r"(cpu|mps|(cuda|xpu)(:\d+)?)")
_MISSING = "???"  # OmegaConf's "must be set" marker, usable in presets
PAIRWISE_ALGOS = ("d3po",)  # methods that learn from (winner, loser) pairs over noise-sharing images
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # an original-layout SD checkpoint in one file


class ConfigError(ValueError):
    """A configuration problem, told in one line that names the offending key."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # one line whatever the cause's text was


class _Section(BaseModel):
    # extra="forbid": a typo is an error, never a silently ignored setting.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), coerce_numbers_to_str=True)


class SamplerConfig(_Section):
    """The stochastic sampler: steps, η and classifier-free guidance."""

    steps: int = Field(20, ge=1)
    eta: float = Field(1.0, ge=0.0)  # DDIM's η; for a flow model (SD 3) the SDE's noise level a (0.7: Flow-GRPO's)
    guidance_scale: float = Field(2.0, ge=0.0)
    resolution: int | None = Field(None, ge=8)  # pixels; None: the model's native size
    batch_size: int = Field(8, ge=1)  # images per denoising forward pass (memory, not results)


class LoraSettings(_Section):
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


class PolicyGradientSettings(_Section):
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


class HeroSettings(_Section):
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
    # The paper's DDPO update, or RAFT's denoising loss (``likelihood`` section) on the judged-good images and the
    # accepted unjudged samples; unjudged: samples per round scored by the learned reward, at no feedback cost
    # (docs/learning.md, "HERO with a likelihood update and unjudged samples").
    update: Literal["policy_gradient", "likelihood"] = "policy_gradient"
    noise: Literal["guided", "plain"] = "guided"  # starting noise of the rounds: feedback-guided, or N(0, I)
    unjudged: int = Field(0, ge=0)
    unjudged_precision: float = Field(0.9, gt=0.0, le=1.0)  # the share good above the threshold, on held-out marks


class DDPOSettings(_Section):
    """DDPO: which per-image reward the policy gradient uses."""

    # "score": the source's graded score when it gives one (judge score, reward value), else good = 1 / 0;
    # "good": always good = 1 / not good = 0 (the same binary signal HERO gets from a person).
    reward: Literal["score", "good"] = "score"


class D3POSettings(_Section):
    """D3PO: −log σ(β·(log ρ_w − log ρ_l)), ρ = clamp(π_θ/π_ref, 1 − c, 1 + c) per denoising step."""

    beta: float = Field(0.1, gt=0)
    ratio_clip: float = Field(0.1, gt=0, lt=1)


class DPOKSettings(_Section):
    """DPOK: α·(clipped policy gradient with a value baseline) + β·KL to the pretrained model."""

    reward_weight: float = Field(10.0, gt=0)  # α: scales the advantage r − V (rewards in [0, 1] here)
    kl_weight: float = Field(0.01, ge=0)  # β on the ε-prediction MSE to the adapter-free UNet
    value_lr: float = Field(1e-3, gt=0)  # a small net refitted each round on few samples: a brisk rate
    value_epochs: int = Field(8, ge=0)  # passes over the round's (x_t, t, r) before the policy update
    value_batch_size: int = Field(64, ge=1)


class LikelihoodSettings(_Section):
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


class KtoSettings(_Section):
    """Diffusion-KTO (experimental: leaves the base model within one round, docs/learning.md)."""

    # Scales ℓ_ref − ℓ_θ (~3e-3 here) into the sigmoid, saturating once |β·Δ| ≳ 4; 5000: Diffusion-DPO's for SD 1.5.
    beta: float = Field(5000.0, gt=0)
    good_weight: float = Field(1.0, gt=0)  # λ_D of KTO: weight of the good images' term
    bad_weight: float = Field(1.0, gt=0)  # λ_U: weight of the not-good images' term


class NftSettings(_Section):
    """DiffusionNFT: the step from the base model, f± = f_ref ± β·(f_θ − f_ref) (``hero.algorithms.nft``)."""

    beta: float = Field(1.0, gt=0)  # 1: the paper's; smaller steps further from the base (like a guidance scale)


class HerdSettings(_Section):
    """HERD: DDPO + hindsight replay of a round's failures, relabelled with what they show, in the next update."""

    # Share of a round's images examined for a relabel (at most); each examined image costs one feedback.
    replay_fraction: float = Field(0.25, ge=0.0, le=1.0)


class SeikoSettings(_Section):
    """SEIKO: a ridge reward on frozen features with optimism, backpropagated through the sampler with a KL."""

    variant: Literal["nonadaptive", "greedy", "ucb", "bootstrap", "thompson"] = "ucb"
    ridge: float = Field(10.0, gt=0)  # λ of A = ΦᵀΦ + λI (features standardised by the first round's)
    c: float = Field(0.1, ge=0)  # optimism: UCB's c, bootstrap's c (mean + c·std), Thompson's posterior σ
    ensemble_size: int = Field(4, ge=2)  # bootstrap: ridge fits on resamples
    kl_weight: float = Field(1.0, ge=0)  # α on Σ_steps mean_d (μ_θ − μ_prev)²/2σ_t² to the previous round
    backprop_steps: int = Field(4, ge=1)  # K: the last K denoising steps carry gradients (capped at sampler.steps)
    updates_per_round: int = Field(8, ge=0)  # optimiser steps, each on a fresh differentiable rollout
    batch_size: int = Field(8, ge=1)  # images per differentiable rollout


class TaskSettings(_Section):
    """What the simulated human wants beyond the prompt (toy world): a hidden background, a forbidden colour."""

    hidden_background: str | None = None
    forbidden_colour: str | None = None

    @field_validator("hidden_background", "forbidden_colour")
    @classmethod
    def _known(cls, v: str | None, info: ValidationInfo) -> str | None:
        from hero.toyworld.scenes import BACKGROUNDS, COLOURS  # lazy: only a task section needs the toy world
        allowed = BACKGROUNDS if info.field_name == "hidden_background" else COLOURS
        if v is not None and v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)} or null")
        return v


class WebSettings(_Section):
    """The feedback web page's server (``--feedback web``, ``hero label``): where it listens, whom it answers."""

    host: str = Field("127.0.0.1", min_length=1)  # loopback only unless told otherwise (e.g. 0.0.0.0)
    port: int = Field(8765, ge=0, le=65535)  # 0: any free port; fixed by default so a restarted run keeps its URL
    allowed_hosts: list[str] = Field(default_factory=list)  # extra Host-header names (besides loopback, host)


class MemorySettings(_Section):
    """GPU memory (real checkpoints): activation checkpointing in the updates and the attention kernel."""

    # Recompute the UNet's activations in the backward pass instead of keeping them: far less memory per
    # update minibatch, about a third more update time. Sampling (no gradients) is unaffected.
    gradient_checkpointing: bool = False
    # "sdpa": PyTorch's scaled_dot_product_attention (diffusers' default processor with torch 2: flash /
    # memory-efficient kernels where the GPU has them); "xformers": xformers' kernel, if it is installed.
    attention: Literal["sdpa", "xformers"] = "sdpa"


class RewardModelSettings(_Section):
    """The reward model behind ``--feedback reward:<name>`` (AI feedback; its scores are DDPO's rewards)."""

    path: str | None = None  # local transformers CLIP folder: aesthetic (ViT-L/14), pickscore, hpsv2
    head_path: str | None = None  # aesthetic: the LAION MLP head's state dict (.pth / .safetensors)
    threshold: float | None = None  # good = score >= threshold (with top_k: both)
    top_k: int | None = Field(None, ge=1)  # good = the k highest scores of the round
    good_fraction: float = Field(0.25, gt=0.0, le=1.0)  # neither threshold nor top_k: good = this top share
    device: str | None = None  # None: the run's device
    batch_size: int = Field(32, ge=1)  # images per reward-model forward pass

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not _DEVICE.fullmatch(v):
            raise ValueError("must be cpu, cuda, cuda:N, mps or xpu[:N] (or null: the run's device)")
        return v


def parse_feedback(spec: str) -> tuple[str, float | str | None]:
    """Split a feedback spec: ("sim", error_rate) | ("reward", name) | ("web", None); ValueError if malformed."""
    kind, _, arg = spec.partition(":")
    if spec in ("sim", "web") or (kind == "reward" and arg in REWARDS):
        return kind, {"sim": 0.0, "web": None}.get(spec, arg)
    if kind == "sim":
        try:
            rate = float(arg)
        except ValueError:
            raise ValueError(f"error rate {arg!r} is not a number") from None
        if not 0.0 <= rate <= 0.5:  # above 0.5 the "human" is more often wrong than right
            raise ValueError(f"error rate {rate} must be in [0, 0.5]")
        return "sim", rate
    raise ValueError(f"must be sim, sim:<error rate in [0, 0.5]>, {', '.join('reward:' + r for r in REWARDS)} or web")


class TrainConfig(_Section):
    """Everything a training run needs; ``save_config`` writes it resolved into the run folder."""

    # built-in name, a local diffusers pipeline folder, or a single-file SD 1.x/2.x checkpoint (.safetensors/.ckpt)
    model: str = Field("tiny-shapes", min_length=1)
    # single-file checkpoints only: a local diffusers folder of the same architecture (configs, tokenizer/, no weights)
    model_config_dir: str | None = None
    prompt: str = Field(min_length=1)
    algo: Literal["hero", "ddpo", "d3po", "dpok", "seiko", "herd", "raft", "kto", "nft"] = "hero"
    feedback: str = "sim"
    budget: int = Field(512, gt=0)  # feedback budget: images judged in total
    images_per_round: int = Field(64, gt=0)
    seed: int = Field(0, ge=0)
    out: str = Field("runs/train", min_length=1)
    device: str = "cpu"
    # bf16/fp16: frozen weights stored in that dtype and UNet calls autocast to it; LoRA weights, their gradients,
    # the optimiser and the log-probs stay fp32. fp16 gets dynamic loss scaling (``rollout.LossScale``,
    # checkpointed with each round). "auto": bf16 where native (not on a CPU without avx512_bf16/AMX: ~20x
    # slower there, docs/speed.md), else fp32, recorded in config.yaml (``models.loading.resolve_precision``).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    keep_checkpoints: int = Field(0, ge=0)  # per-round checkpoints kept (the last ones); 0 keeps all
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    pg: PolicyGradientSettings = Field(default_factory=PolicyGradientSettings)
    hero: HeroSettings = Field(default_factory=HeroSettings)
    ddpo: DDPOSettings = Field(default_factory=DDPOSettings)
    d3po: D3POSettings = Field(default_factory=D3POSettings)
    dpok: DPOKSettings = Field(default_factory=DPOKSettings)
    herd: HerdSettings = Field(default_factory=HerdSettings)
    seiko: SeikoSettings = Field(default_factory=SeikoSettings)
    likelihood: LikelihoodSettings = Field(default_factory=LikelihoodSettings)
    kto: KtoSettings = Field(default_factory=KtoSettings)
    nft: NftSettings = Field(default_factory=NftSettings)
    task: TaskSettings = Field(default_factory=TaskSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    reward_model: RewardModelSettings = Field(default_factory=RewardModelSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)

    @property
    def rounds(self) -> int:
        """Number of feedback rounds: ceil(budget / images_per_round) (the last one may be smaller)."""
        return math.ceil(self.budget / self.images_per_round)

    @property
    def pairwise(self) -> bool:
        """Whether the method learns from pairwise preferences (D3PO) rather than good/best marks: the page asks
        for pairs, and the round loop asks the source for them (``PAIRWISE_ALGOS``)."""
        return self.algo in PAIRWISE_ALGOS

    def reward_options(self) -> dict[str, Any]:
        """The reward_model section as keywords for ``RewardFeedback`` (device: the run's unless set)."""
        opts = self.reward_model.model_dump()
        opts["device"] = opts["device"] or self.device
        return opts

    def task_options(self) -> dict[str, str]:
        """The task's set options as keywords for ``parse_task`` (e.g. {"hidden_background": "black"})."""
        return self.task.model_dump(exclude_none=True)

    @field_validator("task", mode="before")
    @classmethod
    def _no_task(cls, v: Any) -> Any:
        return {} if v is None else v  # "task: null" in YAML means no hidden preference

    @field_validator("feedback", "device")
    @classmethod
    def _spec(cls, v: str, info: ValidationInfo) -> str:
        if info.field_name == "feedback":
            parse_feedback(v)
        elif not _DEVICE.fullmatch(v):  # catch "gpu" now, not after the model has loaded
            raise ValueError("must be cpu, cuda, cuda:N, mps or xpu[:N]")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        for key, value, limit, limit_key in (("images_per_round", self.images_per_round, self.budget, "budget"),
                                             ("pg.timesteps_per_traj", self.pg.timesteps_per_traj, self.sampler.steps,
                                              "sampler.steps")):
            if value > limit:  # a cross-field error, so pydantic cannot name the key: we do
                raise PydanticCustomError("config", "bad value for '{key}': {value} (must be <= {lk} ({limit}))",
                                          {"key": key, "value": value, "lk": limit_key, "limit": limit})
        if self.algo == "seiko" and self.memory.gradient_checkpointing:
            # SEIKO checkpoints each denoising step itself, and its reward's backward through the frozen features
            # (adapter switched off) cannot be recomputed under the UNet's own checkpointing.
            raise PydanticCustomError("config", "bad value for 'memory.gradient_checkpointing': True (seiko "
                                      "checkpoints its denoising steps itself: leave it false)", {})
        if self.model.lower().endswith(SINGLE_FILE_SUFFIXES) and self.model_config_dir is None:
            raise PydanticCustomError("config", "missing value for 'model_config_dir' (--model {model} is a "
                                      "single-file checkpoint: set model_config_dir=<a local diffusers folder of the "
                                      "same architecture, e.g. SD 1.5's configs and tokenizer>; nothing is downloaded)",
                                      {"model": self.model})
        kind, _, name = self.feedback.partition(":")
        for key in _REWARD_PATHS.get(name, ()) if kind == "reward" else ():
            if getattr(self.reward_model, key) is None:  # caught now, not after the diffusion model has loaded
                raise PydanticCustomError("config", "missing value for 'reward_model.{key}' (--feedback {spec} "
                                          "loads from local paths: set reward_model.{key}=...)",
                                          {"key": key, "spec": self.feedback})
        if self.algo == "d3po":  # images come in pairs sharing a starting noise: every round must pair up
            for key, value in (("images_per_round", self.images_per_round), ("budget", self.budget)):
                if value % 2:
                    raise PydanticCustomError("config", "bad value for '{key}': {value} (must be even for d3po: "
                                              "images are compared in pairs)", {"key": key, "value": value})
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load and validate a config file (e.g. a run's saved ``config.yaml``)."""
        return _validate(_read_yaml(Path(path), "config file"))

    def to_yaml(self) -> str:
        """The resolved config as YAML text."""
        return OmegaConf.to_yaml(OmegaConf.create(self.model_dump(mode="json")))


def list_presets() -> list[str]:
    """Names of the shipped presets (``src/hero/presets/*.yaml``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(preset: str | Path | None = None, overrides: Sequence[str] = (), **values: Any) -> TrainConfig:
    """Defaults, then a preset (name or YAML path), then keyword values (None ignored), then ``key=value`` overrides."""
    data: dict = {}
    if preset is not None:
        _merge(data, _read_yaml(_preset_path(preset), "preset"))
    for key, value in values.items():
        if value is not None:  # a CLI option left unset must not clobber the preset
            _merge(data, _nest(key, value.as_posix() if isinstance(value, Path) else value))
    if isinstance(overrides, str):
        overrides = [overrides]  # a lone "a=b" is one override, not a sequence of characters
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"bad override {item!r} (expected key=value, e.g. pg.timesteps_per_traj=3)")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=True)
        except Exception as e:  # OmegaConf's errors are multi-line; ConfigError flattens them
            raise ConfigError(f"bad override {item!r}: {e}") from None
        _merge(data, parsed)
    return _validate(data)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, "# hero training config (resolved)\n" + cfg.to_yaml())


def _preset_path(preset: str | Path) -> Path:
    name = str(preset)
    if isinstance(preset, str) and re.fullmatch(r"[\w.-]+", name) and (PRESETS_DIR / f"{name}.yaml").is_file():
        return PRESETS_DIR / f"{name}.yaml"
    if Path(preset).is_file():
        return Path(preset)
    raise ConfigError(f"unknown preset {name!r} (available: {', '.join(list_presets())}; or a path to a YAML file)")


def _read_yaml(path: Path, what: str) -> dict:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:
        raise ConfigError(f"cannot read {what} '{path}': {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must be a mapping of config keys, got {type(data).__name__}")
    return data


def _nest(key: str, value: Any) -> dict:
    # "pg.batch_size" as a keyword (via **{...}) means the same as the override pg.batch_size=...
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _merge(base: dict, new: dict) -> dict:
    # Sections merge key by key; anything else (scalars, a section replaced by a scalar) is overwritten, and
    # pydantic then reports a wrong type under the right key.
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def _all_keys(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        section = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        keys += _all_keys(info.annotation, f"{prefix}{name}.") if section else [prefix + name]
    return keys


def _suggest(key: str) -> str:
    keys = _all_keys()
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not match:  # right name, wrong section: "clip_range" -> "pg.clip_range"
        leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
        leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.75)
        match = [leaves[leaf[0]]] if leaf else []
    return f" (did you mean '{match[0]}'?)" if match else ""


_OPS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _describe(err: dict) -> str:
    key, kind, ctx = ".".join(str(p) for p in err["loc"]), err["type"], err.get("ctx") or {}
    if kind == "config":
        return err["msg"]
    if kind == "extra_forbidden":
        return f"unknown config key '{key}'{_suggest(key)}"
    if kind == "missing":
        return f"missing config key '{key}' (required)"
    if kind in _OPS:
        why = f"must be {_OPS[kind]} {next(iter(ctx.values()))}"
    elif kind == "literal_error":
        why = f"must be one of {ctx.get('expected', '')}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        why = "must be a section: a mapping of keys"
    else:  # pydantic's own words, in the same voice: "Input should be a valid integer" -> "must be ..."
        why = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"bad value for '{key}': {err.get('input')!r} ({why})"


def _leaves(data: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in data.items():
        yield from _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]


def _validate(data: dict) -> TrainConfig:
    for key, value in _leaves(data):
        if value == _MISSING:
            raise ConfigError(f"missing value for '{key}' (the preset leaves it to you: set {key}=...)")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        # What the user typed wrong (unknown keys, bad values) before what they left out.
        errors = sorted(e.errors(), key=lambda err: {"extra_forbidden": 0, "missing": 2}.get(err["type"], 1))
        raise ConfigError("; ".join(_describe(err) for err in errors)) from None
