"""`hero eval RUN`: success rates of the base model and of the run's LoRA, under plain and guided noise.

- base_plain: the base model, z_T ~ N(0, I);
- plain: the fine-tuned model, z_T ~ N(0, I) (the honest number: what a user gets);
- guided: the fine-tuned model from the run's feedback-guided noise (best/good z_T, perturbed), as HERO
  samples during training; reviewers asked for both, since guided noise alone flatters the method;
- base_guided: the base model from the same guided noise (how much of "guided" is the noise alone).
All sample with the run's sampler and fresh evaluation seeds, and are judged by the toy-world judge. Beside each
rate: its binomial standard error (``stderr``), the samples' ``diversity`` and their ``memorisation`` of the
images judged good during the run (``hero.diversity``), so that a method that collapses onto a few of them
shows it. And why images were rejected (``failures``: the share failing each judge component, e.g. ``count``)
with the distribution of the objects the judge counted (``objects``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hero.algorithms import make_algorithm
from hero.algorithms.base import rollout_kwargs
from hero.config import TrainConfig
from hero.diversity import diversity, memorisation
from hero.models import load_pipeline
from hero.models.families import denoiser_for
from hero.prompts import PromptSpec, TaskOptions
from hero.rollout import rollout
from hero.runs.feedback_log import FeedbackLog
from hero.runs.folder import RunFolder
from hero.toyworld import Judge, Verdict, parse_task

EVAL_SEED = 987_654  # distinct from every training round's seed


def _samples(pipe, cfg: TrainConfig, n: int, noise: torch.Tensor | None, seed: int) -> np.ndarray:
    """n images of the run's prompt with the run's sampler, from evaluation seed ``seed`` (and ``noise``)."""
    g = torch.Generator("cpu").manual_seed(seed)
    images = []
    for lo in range(0, n, cfg.sampler.batch_size * 8):
        k = min(cfg.sampler.batch_size * 8, n - lo)
        traj = rollout(pipe, [cfg.prompt] * k, generator=g, start_noise=None if noise is None else noise[lo: lo + k],
                       **rollout_kwargs(cfg, training=False))
        images.append(traj.images)
    return np.concatenate(images)


# The judge's components an image can fail (``hero.toyworld.judge.Verdict``), reported per condition.
COMPONENTS = ("colour", "shape", "count", "background", "binding", "well_formed", "preference", "safe")


def _verdicts(cfg: TrainConfig, images: np.ndarray) -> list:
    return Judge().judge_batch(images, parse_task(cfg.prompt, **cfg.task_options()))


def judged_good_images(run: RunFolder, last_round: int) -> np.ndarray:
    """The images judged good (or best) in rounds 0..last_round: what a likelihood method trained on."""
    log = FeedbackLog(run.feedback_db) if run.feedback_db.is_file() else None
    picked = []
    for r in range(last_round + 1):
        fb = None if log is None else log.get_round(r)
        if fb is None or not fb.good or not (run.round_dir(r) / "images").is_dir():
            continue  # a pairwise round has no good marks
        images = run.round_images(r)
        keep = [i for i, g in enumerate(fb.good) if g or i == fb.best]
        picked.append(images[keep])
    if log is not None:
        log.close()
    return np.concatenate(picked) if picked else np.zeros((0, 1, 1, 3), dtype=np.uint8)


class _Report:
    """Collects, per condition, the success rate with its standard error, diversity and memorisation."""

    def __init__(self, cfg: TrainConfig, result: dict, training: np.ndarray):
        self.cfg, self.result, self.training = cfg, result, training
        for key in ("stderr", "diversity", "memorisation", "failures", "objects"):
            result.setdefault(key, {})

    def add(self, key: str, images: np.ndarray) -> None:
        verdicts = _verdicts(self.cfg, images)
        p = sum(v.good for v in verdicts) / len(images)
        self.result[key] = p
        # Why images were rejected: the share failing each component, and the objects the judge counted.
        failed = [failed_components(v) for v in verdicts]
        self.result["failures"][key] = {c: sum(c in f for f in failed) / len(images)
                                        for c in COMPONENTS if any(c in f for f in failed)}
        counts = np.bincount([v.n_objects for v in verdicts])
        self.result["objects"][key] = {int(k): float(c / len(images)) for k, c in enumerate(counts) if c}
        self.result["stderr"][key] = math.sqrt(p * (1 - p) / len(images))  # binomial standard error
        self.result["diversity"][key] = diversity(images)
        if len(self.training):
            self.result["memorisation"][key] = memorisation(images, self.training)


def failed_components(v: Verdict) -> set[str]:
    """The judge components an image fails; ``binding`` only when colour, shape and count are right.

    The judge's binding check also fails whenever the count is wrong (a fourth triangle is an object no group
    claims), so reported as it is it would repeat ``count``; here it names only the attribute mixing that the
    other components do not explain ("one red square and one blue circle" for a red circle and a blue square).
    """
    failed = {c for c in COMPONENTS if not getattr(v, c)}
    if failed & {"colour", "shape", "count"}:
        failed.discard("binding")
    return failed


def _checkpoint_round(run: RunFolder, round_index: int | None) -> int:
    """The round whose checkpoint is evaluated: ``round_index``, or the last complete one."""
    last = run.latest_round()
    if last < 0:
        raise FileNotFoundError(f"{run.path} has no complete round yet: nothing to evaluate")
    if round_index is not None:
        if not 0 <= round_index <= last or not run.checkpoint_dir(round_index).is_dir():
            raise FileNotFoundError(f"{run.path} has no checkpoint of round {round_index} (last complete: {last})")
        last = round_index
    return last


def _run_config(run: RunFolder, compile: bool | None) -> TrainConfig:
    """The run's config, with ``sampler.compile`` set to ``compile`` unless it is None (the run's own)."""
    cfg = TrainConfig.from_yaml(run.config_path)
    if compile is None:
        return cfg
    return cfg.model_copy(update={"sampler": cfg.sampler.model_copy(update={"compile": compile})})


def evaluate_prompts(run_dir: str | Path, prompts: list[PromptSpec] | None = None, n: int = 256,
                     seed: int = EVAL_SEED, include_base: bool = True, round_index: int | None = None,
                     compile: bool | None = None) -> dict:
    """Success per prompt and its mean, of the base model and the run's LoRA, on the same seeds per prompt.

    Args:
        prompts: the prompts to evaluate (e.g. held out: never trained on), each with its task options over the
            run's ``task`` section; None: the run's own prompt set (or its one prompt).
        n: images per prompt and condition.
        compile: sample through torch.compile (``sampler.compile``; None: as the run's config says).
    Returns {"prompts": {prompt: {"trained", "base_plain", "plain", ["guided"], "stderr", ...}}, "mean": {...}}: the
    mean's standard error is sqrt(Σ s.e.²)/P (the prompts are sampled independently). Guided noise exists only for
    a prompt a HERO run judged.
    """
    run = RunFolder(run_dir)
    cfg = _run_config(run, compile)
    last = _checkpoint_round(run, round_index)
    trained = set(cfg.prompt_list)
    if prompts is None:
        prompts = list(cfg.prompts) if cfg.prompt_set else [PromptSpec(prompt=cfg.prompt)]
    pipe = load_pipeline(cfg.model, device=cfg.device, model_config_dir=cfg.model_config_dir)
    model = denoiser_for(pipe)
    algo = make_algorithm(cfg, pipe)
    algo.load(run.checkpoint_dir(last))
    training = judged_good_images(run, last)
    result: dict = {"run": str(run.path), "algo": cfg.algo, "rounds": last + 1, "n": n, "prompts": {}}
    memories = getattr(algo, "memories", {})
    with torch.no_grad():
        for spec in prompts:
            defaults = cfg.task_options(spec.prompt)  # the run's options for a trained prompt, its task section else
            one = cfg.model_copy(update={"prompt": spec.prompt, "prompts": None,
                                         "task": TaskOptions(**spec.task_options(defaults))})
            row: dict = {"trained": spec.prompt in trained}
            report = _Report(one, row, training)
            if include_base:
                with model.base_model():
                    report.add("base_plain", _samples(pipe, one, n, None, seed))
            report.add("plain", _samples(pipe, one, n, None, seed))
            memory = memories.get(spec.prompt)
            if memory is not None and memory.best_noise is not None:
                noise = algo.guided_noise(n, torch.Generator("cpu").manual_seed(seed + 1), spec.prompt)
                report.add("guided", _samples(pipe, one, n, noise, seed))
            result["prompts"][spec.prompt] = row
    result["mean"] = _mean_over_prompts(list(result["prompts"].values()))
    return result


def _mean_over_prompts(rows: list[dict]) -> dict:
    """Each condition's mean success over the prompts that have it, with sqrt(Σ s.e.²)/P."""
    out: dict = {"stderr": {}}
    for key in ("base_plain", "plain", "guided"):
        have = [r for r in rows if key in r]
        if have:
            out[key] = sum(r[key] for r in have) / len(have)
            out["stderr"][key] = math.sqrt(sum(r["stderr"][key] ** 2 for r in have)) / len(have)
    return out


def evaluate(run_dir: str | Path, n: int = 256, seed: int = EVAL_SEED, include_base: bool = True,
             round_index: int | None = None, base_plain: float | None = None,
             prompts: list[PromptSpec] | None = None, compile: bool | None = None) -> dict:
    """Success rates (share of images the judge calls good) as a dict; see the module docstring.

    ``round_index`` evaluates that round's checkpoint (it must still be on disk) instead of the last one.
    ``base_plain``, when known (the same model, prompt, sampler, seed and n evaluated elsewhere), is reported
    instead of sampled again; ``base_guided`` depends on this run's guided noise and is always sampled.
    ``prompts`` (or a prompt-set run) evaluates each prompt instead (``evaluate_prompts``).
    ``compile`` samples through torch.compile (``sampler.compile``; None: as the run's config says): the same
    success rates up to the images that float rounding flips.
    """
    run = RunFolder(run_dir)
    cfg = _run_config(run, compile)
    if prompts is not None or cfg.prompt_set:
        return evaluate_prompts(run_dir, prompts, n=n, seed=seed, include_base=include_base,
                                round_index=round_index, compile=compile)
    last = _checkpoint_round(run, round_index)
    pipe = load_pipeline(cfg.model, device=cfg.device, model_config_dir=cfg.model_config_dir)
    model = denoiser_for(pipe)
    result: dict = {"run": str(run.path), "prompt": cfg.prompt, "algo": cfg.algo, "rounds": last + 1, "n": n}
    algo = make_algorithm(cfg, pipe)  # adds the LoRA (identity at init: the base model)
    guided = getattr(algo, "guided_noise", None)
    report = _Report(cfg, result, judged_good_images(run, last))
    result["training_images"] = len(report.training)
    with torch.no_grad():
        if include_base and base_plain is not None:
            result["base_plain"] = base_plain
        elif include_base:
            with model.base_model():
                report.add("base_plain", _samples(pipe, cfg, n, None, seed))
        algo.load(run.checkpoint_dir(last))
        report.add("plain", _samples(pipe, cfg, n, None, seed))
        if guided is not None:
            noise = guided(n, torch.Generator("cpu").manual_seed(seed + 1))
            report.add("guided", _samples(pipe, cfg, n, noise, seed))
            if include_base:
                with model.base_model():
                    report.add("base_guided", _samples(pipe, cfg, n, noise, seed))
    return result
