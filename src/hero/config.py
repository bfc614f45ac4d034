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
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hero.prompts import PromptSpec, TaskOptions, round_prompts
from hero.runs.atomic import atomic_write_text
from hero.settings import (
    D3POSettings,
    DDPOSettings,
    DPOKSettings,
    HerdSettings,
    HeroSettings,
    KtoSettings,
    LikelihoodSettings,
    LoraSettings,
    NftSettings,
    PolicyGradientSettings,
    SamplerConfig,
    Section,
    SeikoSettings,
)

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
# The methods that learn from a prompt set (``hero train --prompts``); the others read one prompt in their updates.
PROMPT_SET_ALGOS = ("hero", "ddpo", "raft", "kto", "nft")
PAIRWISE_ALGOS = ("d3po",)  # methods that learn from (winner, loser) pairs over noise-sharing images
# The methods whose updates read only a round's final images, never its rollout's log-probs (hero.likelihood).
IMAGE_ONLY_ALGOS = ("raft", "kto", "nft")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # an original-layout SD checkpoint in one file


def _config_error(key: str, message: str) -> PydanticCustomError:
    """A cross-field error that names its key (pydantic cannot: the model validator sees every field)."""
    return PydanticCustomError("config", "bad value for '{key}': {message}", {"key": key, "message": message})


TaskSettings = TaskOptions  # the run's ``task`` section: what the simulated human wants beyond the prompt


class ConfigError(ValueError):
    """A configuration problem, told in one line that names the offending key."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # one line whatever the cause's text was


class WebSettings(Section):
    """The feedback web page's server (``--feedback web``, ``hero label``): where it listens, whom it answers."""

    host: str = Field("127.0.0.1", min_length=1)  # loopback only unless told otherwise (e.g. 0.0.0.0)
    port: int = Field(8765, ge=0, le=65535)  # 0: any free port; fixed by default so a restarted run keeps its URL
    allowed_hosts: list[str] = Field(default_factory=list)  # extra Host-header names (besides loopback, host)


class MemorySettings(Section):
    """GPU memory (real checkpoints): activation checkpointing in the updates and the attention kernel."""

    # Recompute the UNet's activations in the backward pass instead of keeping them: far less memory per
    # update minibatch, about a third more update time. Sampling (no gradients) is unaffected.
    gradient_checkpointing: bool = False
    # "sdpa": PyTorch's scaled_dot_product_attention (diffusers' default processor with torch 2: flash /
    # memory-efficient kernels where the GPU has them; its math kernel for bf16 on a CPU); "matmul": the engine
    # runs attention as two matmuls and an fp32 softmax (hero.precision), ~25 % faster sampling in bf16 on a CPU but
    # not the default (docs/speed.md); "xformers": xformers' kernel, if it is installed.
    attention: Literal["sdpa", "matmul", "xformers"] = "sdpa"


class RewardModelSettings(Section):
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


class TrainConfig(Section):
    """Everything a training run needs; ``save_config`` writes it resolved into the run folder."""

    # built-in name, a local diffusers pipeline folder, or a single-file SD 1.x/2.x checkpoint (.safetensors/.ckpt)
    model: str = Field("tiny-shapes", min_length=1)
    # single-file checkpoints only: a local diffusers folder of the same architecture (configs, tokenizer/, no weights)
    model_config_dir: str | None = None
    prompt: str | None = Field(None, min_length=1)  # the one prompt; unset when ``prompts`` holds a set
    # A prompt set (``hero train --prompts FILE``, ``hero.prompts``): each round samples across it, per ``prompt_mix``.
    prompts: list[PromptSpec] | None = None
    prompt_mix: Literal["even", "random"] = "even"  # even: the prompts in turn; random: each image draws one
    algo: Literal["hero", "ddpo", "d3po", "dpok", "seiko", "herd", "raft", "kto", "nft"] = "hero"
    feedback: str = "sim"
    budget: int = Field(512, gt=0)  # feedback budget: images judged in total
    images_per_round: int = Field(64, gt=0)
    seed: int = Field(0, ge=0)
    out: str = Field("runs/train", min_length=1)
    device: str = "cpu"
    # bf16/fp16: frozen weights stored in that dtype and UNet calls autocast to it; LoRA weights, their gradients,
    # the optimiser and the log-probs stay fp32. fp16 gets dynamic loss scaling (``rollout.LossScale``,
    # checkpointed with each round). "auto" (the default): bf16 where native (a GPU with bf16, a CPU with
    # avx512_bf16/AMX), else fp32 (a CPU without them emulates bf16 ~20x slower, docs/speed.md); the choice is
    # written into config.yaml (``models.loading.resolve_precision``). bf16's quality was measured against fp32
    # before it became the default (the judge's table within its standard errors; docs/speed.md).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
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

    def task_options(self, prompt: str | None = None) -> dict[str, str]:
        """The task's set options as keywords for ``parse_task`` (e.g. {"hidden_background": "black"}); with
        ``prompt``, that prompt's own options from the set over them."""
        options = self.task.model_dump(exclude_none=True)
        for spec in self.prompts or []:
            if spec.prompt == prompt:
                return spec.task_options(options)
        return options

    @property
    def prompt_list(self) -> list[str]:
        """The prompts the run fine-tunes on: the set's, or ``[prompt]``."""
        return [s.prompt for s in self.prompts] if self.prompts else [self.prompt]

    def round_prompts(self, round_index: int, n: int) -> list[str]:
        """Each image's prompt in round ``round_index`` of ``n`` images, grouped by prompt (``hero.prompts``)."""
        return round_prompts(self.prompt_list, n, round_index, self.prompt_mix, self.seed)

    @property
    def prompt_set(self) -> bool:
        """Whether the run learns from a prompt set (``prompts``) rather than one prompt."""
        return bool(self.prompts)

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
        self._one_prompt_source()
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
        if self.likelihood.rejected != "unused" and self.algo != "raft":  # would be silently ignored otherwise
            raise PydanticCustomError("config", "bad value for 'likelihood.rejected': '{value}' (only raft trains "
                                      "the not-good images on the empty prompt; kto and nft learn from them "
                                      "already, the other methods not at all)", {"value": self.likelihood.rejected})
        if self.sampler.eta == 0 and self._trains_log_probs():  # caught now, not after a round has been judged
            raise PydanticCustomError("config", "bad value for 'sampler.eta': 0 (the deterministic sampler has no "
                                      "log-prob for {algo}'s policy update to train: use > 0, e.g. 1.0 for DDIM "
                                      "or 0.7 for a flow model's SDE)", {"algo": self.algo})
        if self.algo == "d3po":  # images come in pairs sharing a starting noise: every round must pair up
            for key, value in (("images_per_round", self.images_per_round), ("budget", self.budget)):
                if value % 2:
                    raise PydanticCustomError("config", "bad value for '{key}': {value} (must be even for d3po: "
                                              "images are compared in pairs)", {"key": key, "value": value})
        return self

    def keeps_only_images(self) -> bool:
        """Whether the method learns from the final images alone (no policy-gradient ratio)."""
        return self.algo in IMAGE_ONLY_ALGOS or (self.algo == "hero" and self.hero.update == "likelihood")

    def _trains_log_probs(self) -> bool:
        """Whether the update reads the rollout's per-step log-probs (a policy gradient or D3PO's DPO loss; SEIKO
        backpropagates through the sampler instead)."""
        return not self.keeps_only_images() and self.algo != "seiko"

    def _one_prompt_source(self) -> None:
        """Exactly one of ``prompt`` and ``prompts``; a set only for the methods that learn from one."""
        if self.prompt is None and not self.prompts:
            raise PydanticCustomError("config", _NO_PROMPT, {})
        if self.prompt is not None and self.prompts:
            raise _config_error("prompts", "give either prompt (one) or prompts (a set), not both")
        if self.prompts:
            seen = [s.prompt for s in self.prompts]
            dup = next((p for i, p in enumerate(seen) if p in seen[:i]), None)
            if dup is not None:
                raise _config_error("prompts", f"{dup!r} is given twice")
            if self.algo not in PROMPT_SET_ALGOS:
                raise _config_error("prompts", f"--algo {self.algo} learns from one prompt; prompt sets are "
                                    f"supported by {', '.join(PROMPT_SET_ALGOS)}")

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
    for given, other in (("prompts", "prompt"), ("prompt", "prompts")):  # --prompts replaces a preset's prompt
        if values.get(given) is not None:
            data.pop(other, None)
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


_NO_PROMPT = "missing config key 'prompt' (required: --prompt TEXT, or --prompts FILE for a set)"


def _validate(data: dict) -> TrainConfig:
    for key, value in _leaves(data):
        if value == _MISSING:
            raise ConfigError(f"missing value for '{key}' (the preset leaves it to you: set {key}=...)")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        # What the user typed wrong (unknown keys, bad values) before what they left out.
        errors = sorted(e.errors(), key=lambda err: {"extra_forbidden": 0, "missing": 2}.get(err["type"], 1))
        said = [_describe(err) for err in errors]
        if data.get("prompt") is None and not data.get("prompts") and not any(_NO_PROMPT in x for x in said):
            said.append(_NO_PROMPT)  # the model's own check did not run: report it beside the other mistakes
        raise ConfigError("; ".join(said)) from None
