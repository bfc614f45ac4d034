"""The online loop every algorithm shares: sample a round, ask for feedback, learn, checkpoint, repeat.

Each step leaves a durable mark before the next begins, so a crash at any moment loses no judgement and
`--resume` never shows the person an image twice:
  sampled  → rounds/round_k/trajectories.pt (the images to be judged are fixed from here on)
  judged   → the round is in feedback.sqlite (written before the loop moves on)
  learned  → checkpoints/round_k/ complete (settings.json last), its metrics line, then checkpoints/latest = k
Randomness is drawn from generators seeded by (seed, round), so a resumed run samples what the
uninterrupted one would have. A resumed run works on the folder it is given (``cfg.out``), checked first
(``hero.runs.checks``): unreadable or disagreeing files stop it before anything is written.

Several processes (``accelerate launch --num_processes N -m hero.cli train ...``; ``hero.distributed``): each
samples its share of a round (the same images as one process would), rank 0 alone asks for the feedback, writes
the run folder and the feedback log, and broadcasts the judgements; all learn, the LoRA updates data-parallel;
the processes meet at a barrier after each round's checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hero.algorithms import make_algorithm
from hero.algorithms.base import rollout_kwargs, round_generator
from hero.config import TrainConfig, save_config
from hero.distributed import SINGLE, Dist, init_distributed
from hero.feedback.base import FeedbackSource, RoundFeedback
from hero.feedback.sources import make_feedback_source
from hero.lora import lora_parameters, save_lora
from hero.models import load_pipeline
from hero.models.denoiser import Denoiser
from hero.models.loading import configure_memory, resolve_precision, weight_dtype
from hero.prompts import group_slices
from hero.rollout import Trajectories, rollout
from hero.runs.checks import ResumePlan, check_resume, settings_record
from hero.runs.errors import RunFolderError
from hero.runs.feedback_log import FeedbackLog, RoundRecorder
from hero.runs.folder import RunFolder
from hero.runs.lock import hold_lock
from hero.runs.tracking import Tracker

logger = logging.getLogger("hero.train")
T = TypeVar("T")


def round_sizes(cfg: TrainConfig) -> list[int]:
    """Images per round until the feedback budget is spent (the last round may be smaller)."""
    full, rest = divmod(cfg.budget, cfg.images_per_round)
    return [cfg.images_per_round] * full + ([rest] if rest else [])


def train(cfg: TrainConfig, resume: bool = False, source: FeedbackSource | None = None,
          show_progress: bool = True, plan: ResumePlan | None = None) -> RunFolder:
    """Run (or resume) an online fine-tuning run into ``cfg.out``; returns the run folder.

    Resuming checks the folder first (``hero.runs.checks``; ``plan``: that check, already made by this process)
    and writes nothing into it when a file is unreadable or disagrees: a ``RunFolderError`` names the file.
    Under a launcher with several processes every process calls this; ``source`` is used on rank 0 only.
    """
    dist, device = init_distributed(cfg.device)
    if cfg.precision == "auto":  # decided once, here, and written into config.yaml: the run shows what it used
        cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, device)})
    run = RunFolder(cfg.out)
    # One writer per run folder: a second run on it stops here, in one line, before it reads or writes a record.
    with contextlib.ExitStack() as held:
        _on_main(dist, lambda: held.enter_context(hold_lock(run.path)))  # refused: every process stops
        return _train_in(cfg, run, dist, device, resume, source, show_progress, plan)


def _train_in(cfg: TrainConfig, run: RunFolder, dist: Dist, device: torch.device, resume: bool,
              source: FeedbackSource | None, show_progress: bool, plan: ResumePlan | None) -> RunFolder:
    """``train`` in its folder, which this process holds (on rank 0)."""
    sizes = round_sizes(cfg)
    if run.config_path.exists() and not resume:
        raise FileExistsError(f"{run.path} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and plan is None:  # checked here: say what the recoveries do (the CLI, checking first, says it)
        plan = _checked(cfg, dist)
        for line in plan.report if dist.is_main else []:
            logger.warning(line)
    dist.barrier()  # every process has looked before rank 0 writes
    if dist.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        if resume:
            plan.apply(run)
            _save_resumed_config(run, cfg)
        else:
            save_config(cfg, run.config_path)
    start = plan.start if resume else 0
    torch.manual_seed(cfg.seed)
    pipe = load_pipeline(cfg.model, device=device, dtype=weight_dtype(cfg.precision),
                         model_config_dir=cfg.model_config_dir)
    configure_memory(pipe, cfg.memory.gradient_checkpointing, cfg.memory.attention)
    algo = make_algorithm(cfg, pipe, dist)  # its updates average over these processes
    dist.broadcast_parameters(lora_parameters(pipe))  # as DDP does: every process starts from rank 0's LoRA
    log = None
    if dist.is_main:  # the feedback source (web server, reward model) and the log live on rank 0 only
        prompts = {p: cfg.task_options(p) for p in cfg.prompt_list} if cfg.prompt_set else cfg.prompt
        source = source or make_feedback_source(cfg.feedback, prompts, cfg.seed, cfg.task_options(),
                                                cfg.reward_options())
        log = _open_log(run.feedback_db)
    if start > 0:
        _load_checkpoint(algo, run.checkpoint_dir(start - 1))
    try:
        _run_rounds(cfg, run, pipe, algo, source, log, start, sizes, dist, show_progress)
    finally:
        if log is not None:
            log.close()  # the last connection folds SQLite's write-ahead log back into feedback.sqlite
    return run


def _run_rounds(cfg: TrainConfig, run: RunFolder, pipe, algo, source, log, start: int, sizes: list[int],
                dist: Dist, show_progress: bool) -> None:
    """Rounds ``start``..end, then the final LoRA; the tracker is closed either way."""
    tracker = Tracker(run.path / "logs", cfg)  # on every process: accelerate writes from the main one only
    scaler = algo.model.precision.scaler  # fp16 only
    with _progress(show_progress and dist.is_main) as progress:
        if start > 0 and scaler is not None:  # fp16: go on at the scale the last checkpoint reached
            scaler.load(run.checkpoint_dir(start - 1))
        task = progress.add_task("rounds", total=len(sizes), completed=start, info="")
        for r in range(start, len(sizes)):
            record = run_round(cfg, run, algo, source, log, r, sizes[r], dist)
            tracker.log(record, step=r)
            said = f"good {record['good_rate']:.2f}" if record["good_rate"] is not None else \
                f"pairs {record['pairs']}"
            progress.update(task, advance=1, info=f"feedback {record['feedback']}/{cfg.budget} · {said}")
    if dist.is_main:
        save_lora(pipe, run.path / "lora")  # the final LoRA, loadable with pipe.load_lora_weights(RUN/lora)
    dist.barrier()
    if dist.enabled:  # accelerate's end_training would also leave the process group: finish the writers only
        for writer in getattr(tracker.accelerator, "trackers", []):
            writer.finish()
    else:
        tracker.close()


def check_run(cfg: TrainConfig) -> ResumePlan:
    """Check the run folder ``cfg.out`` before resuming it with ``cfg`` (read-only; ``hero.runs.checks``)."""
    run = RunFolder(cfg.out)
    if not run.config_path.is_file():
        raise RunFolderError(run.config_path, "is missing: there is no run to resume here")
    return check_resume(run, cfg, round_sizes(cfg))


def _checked(cfg: TrainConfig, dist: Dist) -> ResumePlan:
    """Rank 0 checks the folder and every process gets its plan, or raises its error."""
    return _on_main(dist, lambda: check_run(cfg))


def _on_main(dist: Dist, attempt: Callable[[], T]) -> T:
    """``attempt()`` on rank 0, its result on every process; a ``RunFolderError`` there is raised on all of them.

    Raised on rank 0 alone, the others would wait at the next barrier for ever.
    """
    outcome = None
    if dist.is_main:
        try:
            outcome = attempt()
        except RunFolderError as e:
            outcome = e
    outcome = dist.broadcast(outcome)
    if isinstance(outcome, RunFolderError):
        raise outcome
    return outcome


def _save_resumed_config(run: RunFolder, cfg: TrainConfig) -> None:
    """Write config.yaml when the resumed run changed it: another judge or budget, reward_model/web, or its place."""
    if TrainConfig.from_yaml(run.config_path) != cfg:
        save_config(cfg, run.config_path)


def _open_log(path: Path) -> FeedbackLog:
    try:
        return FeedbackLog(path)
    except sqlite3.DatabaseError as e:
        raise RunFolderError(path, f"is not a readable SQLite feedback log ({e})") from None


def _load_checkpoint(algo, folder: Path) -> None:
    """Load the checkpoint the run goes on from; a state that does not load is a ``RunFolderError``."""
    try:
        algo.load(folder)
    except Exception as e:  # unpickling and load_state_dict report in many types, all "this file is bad"
        raise RunFolderError(folder / "state.pt", f"cannot be loaded into this run's model ({e})") from None


def run_round(cfg: TrainConfig, run: RunFolder, algo, source: FeedbackSource | None, log: FeedbackLog | None,
              r: int, n: int, dist: Dist = SINGLE) -> dict:
    """Sample (or reload), judge (or reload), learn and checkpoint one round; return its metrics.

    Several processes (``dist``): each samples its share, rank 0 judges (``source``, ``log``: rank 0's only) and
    writes, all learn; the returned record's ``feedback`` count is None except on rank 0.
    """
    t0 = time.perf_counter()
    sampled = dist.broadcast((run.round_dir(r) / "trajectories.pt").is_file() if dist.is_main else None)
    traj = run.load_round(r) if sampled else None  # sampled before a crash: the images already on show
    if traj is None:
        prompts = cfg.round_prompts(r, n)  # a prompt set: grouped by prompt, the same list on resume
        noise = algo.start_noise(r, n, round_generator(cfg.seed, r, 0), **({"prompts": prompts} if cfg.prompt_set
                                                                            else {}))
        traj = sample_round(algo.model, prompts, noise, round_generator(cfg.seed, r, 1), rollout_kwargs(cfg), dist)
        differs = dist.broadcast(_replay_differs(run, log, r, traj.images) if dist.is_main else None)
        if differs is not None:
            raise differs
        if dist.is_main:
            run.save_round(r, traj)
    t1 = time.perf_counter()
    feedback = dist.broadcast(judge(cfg, algo, source, log, r, traj.images, run=run, prompts=traj.prompts)
                              if dist.is_main else None)
    t2 = time.perf_counter()
    stats = algo.learn(r, traj, feedback, round_generator(cfg.seed, r, 2))
    if dist.is_main and log is not None and getattr(algo, "relabels", None) is not None:
        log.record_relabels(r, sorted(algo.relabels.values(), key=lambda x: x.image))  # before the checkpoint
    if dist.is_main:
        folder = run.checkpoint_dir(r)
        folder.mkdir(parents=True, exist_ok=True)
        algo.save(folder)
        if algo.model.precision.scaler is not None:
            algo.model.precision.scaler.save(folder)
        run.write_checkpoint_settings(r, settings_record(cfg))  # last: the checkpoint is complete
    pairwise = feedback.pairwise  # a pairwise round has no good marks: report its pairs instead
    # Feedback = images judged: the log's rounds plus any an algorithm asked of a source itself (HERD's relabels).
    n_feedback = None if log is None else log.n_feedback()
    record = {"round": r, "images": n, "feedback": n_feedback,
              "good": None if pairwise else sum(feedback.good),
              "good_rate": None if pairwise else sum(feedback.good) / n, "best": feedback.best,
              **(_per_prompt(feedback) if feedback.prompts is not None else {}),
              **({"pairs": len(feedback.pairs)} if pairwise else {}),
              "seconds_sampling": None if sampled else t1 - t0,  # reloaded after a crash: its sampling time is lost
              "seconds_feedback": t2 - t1, **stats}
    if dist.is_main:
        run.append_metrics(record)
        run.mark_checkpoint(r)
        run.drop_trajectories(r)
        if cfg.keep_checkpoints > 0:
            run.prune_checkpoints(cfg.keep_checkpoints)
    dist.barrier()  # the round's checkpoint is complete before any process starts the next round
    return record


def _replay_differs(run: RunFolder, log: FeedbackLog, r: int, images) -> RunFolderError | None:
    """A round judged before but sampled again (its trajectories gone): an error unless the images are the ones
    judged, to the bit, as on disk; the logged judgement applies only to those."""
    if log.get_round(r) is None:
        return None
    whole = all(run.image_path(r, i).is_file() for i in range(len(images)))
    shown = run.round_images(r) if whole else None
    if shown is not None and shown.shape == images.shape and np.array_equal(shown, images):
        return None
    return RunFolderError(run.round_dir(r) / "images", f"round {r} sampled again differs from the images judged "
                          "(the machine or the software changed?): its judgement cannot be applied to it")


def sample_round(model: Denoiser, prompts: list[str], start_noise: torch.Tensor | None, generator: torch.Generator,
                 kwargs: dict, dist: Dist = SINGLE) -> Trajectories:
    """The round's rollout. Several processes: each samples its contiguous share (the noise is drawn for the whole
    round, so the images are the one-process run's), and every process gets the whole round, on the CPU."""
    if not dist.enabled:
        return rollout(model, prompts, start_noise=start_noise, generator=generator, **kwargs)
    part = None
    if dist.shard(len(prompts)):  # a round smaller than the number of processes leaves some without images
        part = rollout(model, prompts, start_noise=start_noise, generator=generator,
                       shard=(dist.rank, dist.world_size), **kwargs).to("cpu")
    return Trajectories.concat([p for p in dist.all_gather(part) if p is not None])


def judge(cfg: TrainConfig, algo, source: FeedbackSource, log: FeedbackLog, r: int, images,
          run: RunFolder | None = None, prompts: list[str] | None = None) -> RoundFeedback:
    """This round's feedback: asked of the source and recorded, or reloaded when it was judged before a crash.

    An algorithm with ``feedback_kind == "pairs"`` (D3PO) gets pairwise preferences over its
    ``comparison_pairs(n)`` from a source that has ``judge_pairs`` (the simulated human, reward functions, the
    web page's pairwise mode); any other source answers with good/best marks, from which the algorithm derives
    its pairs itself.
    """
    stored = log.get_round(r)
    if stored is not None:  # judged before a crash: never ask again
        return stored
    record = RoundRecorder(log, r, cfg.prompt)  # the only writer of this round's feedback
    if cfg.prompt_set:  # the web page shows the whole round at once; any other source judges prompt by prompt
        bests = run.best_images_before(log, r)
        if hasattr(source, "judge_prompt_set"):
            feedback = source.judge_prompt_set(r, images, prompts, bests, record=record)
        else:
            feedback = judge_prompt_groups(source, r, images, prompts, bests)
        if record.recorded is None:
            record(feedback)
        return feedback
    if getattr(algo, "feedback_kind", "good_best") == "pairs" and hasattr(source, "judge_pairs"):
        # Sorted as the log returns them, so a resumed round learns from the same list in the same order.
        pairs = sorted((int(w), int(lo)) for w, lo in
                       source.judge_pairs(r, cfg.prompt, images, algo.comparison_pairs(len(images)), record=record))
        feedback = RoundFeedback(good=[], best=None, source=source.name, pairs=pairs, n_images=len(images))
    else:
        feedback = source.judge_round(r, cfg.prompt, images, algo.current_best_image(), record=record)
    if record.recorded is None:  # the web source records before it answers the browser; the others, here
        record(feedback)
    return feedback


def judge_prompt_groups(source: FeedbackSource, r: int, images: np.ndarray, prompts: list[str],
                        bests: dict[str, np.ndarray]) -> RoundFeedback:
    """A prompt-set round's feedback: each prompt's images judged as a round of their own, beside that prompt's
    current best (``bests``), then joined into one round (its ``prompts`` and one best per prompt)."""
    good: list[bool] = []
    scores: list[float] | None = []
    best_indices: list[int] = []
    name = None
    for prompt, part in group_slices(prompts):
        fb = source.judge_round(r, prompt, images[part], bests.get(prompt))
        name = name or fb.source
        good += list(fb.good)
        best_indices += [part.start + fb.best] if fb.best is not None else []
        scores = None if scores is None or fb.scores is None else scores + list(fb.scores)
    return RoundFeedback(good=good, best=None, source=name, scores=scores, prompts=list(prompts),
                         bests=tuple(best_indices))


def _per_prompt(feedback: RoundFeedback) -> dict:
    """A prompt-set round's metrics: the good rate of each prompt's images, and each prompt's best."""
    rates: dict[str, list[bool]] = {}
    for i, g in enumerate(feedback.good):
        rates.setdefault(feedback.prompts[i], []).append(g)
    return {"good_rate_by_prompt": {p: sum(v) / len(v) for p, v in rates.items()},
            "bests": {feedback.prompts[b]: b for b in feedback.best_indices}}


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=not enabled)


def final_checkpoint(run_dir: str | Path) -> Path:
    run = RunFolder(run_dir)
    r = run.latest_round()
    if r < 0:
        raise FileNotFoundError(f"{run.path} has no complete round checkpoint yet")
    return run.checkpoint_dir(r)
