"""Before a run resumes: read every file it will rely on, check that they agree, plan the safe recoveries.

``check_resume`` only reads (it leaves the folder byte for byte as it was) and answers a ``ResumePlan`` or
raises a ``RunFolderError`` naming the file at fault; ``ResumePlan.apply`` then writes the recoveries:

- ``checkpoints/latest`` missing, or behind complete checkpoints: set to the last complete checkpoint whose
  rounds are all in the feedback log and in metrics.jsonl (a crash between the metrics and the marker, or a
  lost marker); a marker that is unreadable, or names a checkpoint that is not complete, is refused.
- ``metrics.jsonl``: a torn last line (a crash mid-append) is dropped, and rebuilt from the feedback log when
  its round is learned (marked ``"recovered": true``, without the learning statistics, which are lost); lines
  of rounds after the checkpoint (learned again on resume) are dropped.
- images of a round (``rounds/round_k/images``) that are missing are re-rendered from the round's
  trajectories while they are still there (judged but not learned, or not yet judged). A learned round's
  trajectories are gone, so its missing images cannot be re-rendered: resume does not need them (they are for
  inspection and for the person's "best so far", which the checkpoint holds), so this is one warning line.
- a learned round's leftover trajectories.pt (a crash before it was dropped) is deleted.
- a judged round after the checkpoint whose trajectories are gone (the checkpoints after it were removed) is
  sampled again from the checkpoint, and its judgement used only if the new images equal, to the bit, the
  images on disk that were judged (``hero.train``); so all of them must be there.

Everything else that disagrees stops the resume: a learned round missing from the log (or the log missing,
empty, unreadable, or with a gap), a checkpoint file that is empty, truncated or fails its checksum, torn
trajectories of a round still to learn, metrics lines that disagree with the log, and settings that differ
from those the run was trained with (the checkpoint's settings.json, the log's prompt, the trajectories'
prompt): a resumed run may change only its judge, its budget and ``reward_model.*`` / ``web.*``
(``--feedback``, ``--budget``, ``--set``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from hero.precision import LossScale
from hero.runs.errors import RunFolderError
from hero.runs.folder import LORA_FILE, SETTINGS_FILE, RunFolder, read_metrics
from hero.runs.readers import (
    LoggedRound,
    LogSummary,
    check_safetensors,
    check_torch_file,
    read_log,
    trajectories_summary,
)

__all__ = ["RESUME_HINT", "RESUME_SET_PREFIXES", "ResumePlan", "check_resume", "resume_settings",
           "settings_record"]

RESUME_SET_PREFIXES = ("reward_model.", "web.")  # what --set may change on --resume (besides the judge, budget)
RESUME_HINT = "a resumed run keeps its settings: only --feedback, --budget and --set reward_model.*/web.* may change"
_CHANGEABLE = ("out", "feedback", "budget")


def resume_settings(cfg) -> dict:
    """The config's settings a resumed run must keep, flat (``{"lora.rank": 4, ...}``)."""
    flat: dict = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(cfg.model_dump(mode="json"), "")
    return {k: v for k, v in flat.items() if k not in _CHANGEABLE and not k.startswith(RESUME_SET_PREFIXES)}


def settings_record(cfg) -> dict:
    """What a checkpoint's settings.json holds besides its round: the settings and their fingerprint."""
    settings = resume_settings(cfg)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest, "settings": settings}


def changed_setting(now: dict, then: dict) -> str | None:
    """The first setting (sorted) present in both whose value differs, else None."""
    return next((k for k in sorted(now.keys() & then.keys()) if now[k] != then[k]), None)


@dataclass
class ResumePlan:
    """Where a checked run goes on, and the recoveries to write first (``notes``/``warnings``: one line each)."""

    start: int = 0
    marker: int | None = None
    metrics: list[dict] | None = None
    rerender: list[int] = field(default_factory=list)
    drop_trajectories: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def apply(self, run: RunFolder) -> None:
        """Write the recoveries (each atomically, the marker last)."""
        for r in self.rerender:
            traj = run.load_round(r)
            if traj is not None:
                run.write_images(r, traj.images, only_missing=True)
        for r in self.drop_trajectories:
            run.drop_trajectories(r)
        if self.metrics is not None:
            run.write_metrics(self.metrics)
        if self.marker is not None:
            run.mark_checkpoint(self.marker)

    @property
    def report(self) -> list[str]:
        """What the recoveries did and what could not be recovered, one line each (for the person resuming)."""
        return self.notes + self.warnings


def check_resume(run: RunFolder, cfg, sizes: list[int]) -> ResumePlan:
    """Check the run folder before ``cfg`` (its config, as resumed) goes on with rounds of ``sizes`` images."""
    plan = ResumePlan()
    _check_config_file(run, cfg)
    fb = read_log(run.feedback_db)
    metrics, torn = read_metrics(run.metrics_path)
    latest = _settle_latest(run, fb, metrics, sizes, plan)
    _check_checkpoint(run, latest, cfg)
    _check_log(run, fb, latest, cfg, sizes)
    _check_metrics(run, metrics, torn, latest, fb, plan)
    _check_rounds(run, latest, fb, cfg, sizes, plan)
    plan.start = latest + 1
    return plan


def _check_config_file(run: RunFolder, cfg) -> None:
    """config.yaml is readable and holds the settings ``cfg`` resumes with (a caller may pass its own config)."""
    from hero.config import ConfigError, TrainConfig

    try:
        stored = TrainConfig.from_yaml(run.config_path)
    except ConfigError as e:
        raise RunFolderError(run.config_path, str(e)) from None
    now, then = resume_settings(cfg), resume_settings(stored)
    key = changed_setting(now, then)
    if key is not None:
        raise RunFolderError(run.config_path, f"{key!r} is {then[key]!r} there, but the run was asked to resume "
                                              f"with {now[key]!r}; {RESUME_HINT}")


def _settle_latest(run: RunFolder, fb: LogSummary, metrics: list[dict], sizes: list[int], plan: ResumePlan) -> int:
    """The last learned round: the marker's, or the recovered one where the marker is missing or stale."""
    marker = run.latest_round() if run.latest_path.exists() else None
    rounds = run.checkpoint_rounds()
    legacy = not any((run.checkpoint_dir(r) / SETTINGS_FILE).is_file() for r in rounds)
    complete = [r for r in rounds if run.checkpoint_complete(r, legacy)]
    measured = {m["round"] for m in metrics}
    agreeing = [k for k in complete if k < len(sizes) and all(r in fb.rounds and r in measured for r in range(k + 1))]
    best = max(agreeing, default=-1)
    if marker is not None and marker not in complete:
        _incomplete(run, marker, legacy)
    if marker is not None and best <= marker:
        return marker
    if best >= 0:
        said = "is missing" if marker is None else f"said round {marker}"
        plan.marker = best
        plan.notes.append(f"recovered {run.latest_path}: it {said}, but the checkpoints up to round {best} are "
                          f"complete and agree with {run.metrics_path.name} and {run.feedback_db.name}")
        return best
    if complete:
        raise RunFolderError(run.latest_path, f"is missing, and no complete checkpoint agrees with "
                                              f"{run.metrics_path.name} and {run.feedback_db.name}")
    return -1


def _incomplete(run: RunFolder, r: int, legacy: bool) -> None:
    """Raise for the marker's checkpoint that is not complete, naming the first file that is wrong."""
    folder = run.checkpoint_dir(r)
    if not folder.is_dir():
        raise RunFolderError(folder, f"is missing, but {run.latest_path} names it")
    check_torch_file(folder / "state.pt")
    check_safetensors(folder / "lora" / LORA_FILE)
    settings = folder / SETTINGS_FILE
    if legacy:  # a run from before settings.json: state.pt and the LoRA are all a checkpoint has
        raise RunFolderError(folder, f"is incomplete, but {run.latest_path} names it")
    what = "is empty (0 bytes)" if settings.is_file() else "is missing"
    raise RunFolderError(settings, f"{what}: the checkpoint that {run.latest_path} names was never completed")


def _check_checkpoint(run: RunFolder, latest: int, cfg) -> None:
    """The checkpoint to load is whole, and was trained with the settings the run goes on with."""
    if latest < 0:
        return
    folder = run.checkpoint_dir(latest)
    check_torch_file(folder / "state.pt")
    check_safetensors(folder / "lora" / LORA_FILE)
    scale = folder / LossScale.FILE
    if scale.exists():
        try:
            float(json.loads(scale.read_text(encoding="utf-8"))["scale"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunFolderError(scale, f"is not a loss scale ({e})") from None
    recorded = run.checkpoint_settings(latest)
    if recorded is None:
        return
    now, then = resume_settings(cfg), recorded["settings"]
    key = changed_setting(now, then)
    if key is not None:
        raise RunFolderError(run.config_path, f"{key!r} is {now[key]!r}, but the run was trained with {then[key]!r} "
                                              f"({folder / SETTINGS_FILE}); {RESUME_HINT}")


def _check_log(run: RunFolder, fb: LogSummary, latest: int, cfg, sizes: list[int]) -> None:
    """Every learned round is judged in the log, the log has no gap, and its rounds are this run's."""
    path, learned = run.feedback_db, _span(0, latest)
    if fb.state != "ok" and latest >= 0:
        raise RunFolderError(path, f"is {fb.state}, but {run.latest_path} = {latest} says {learned} were "
                                   "judged and learned")
    missing = [r for r in range(latest + 1) if r not in fb.rounds]
    if missing:
        raise RunFolderError(path, f"has no feedback for {_rounds(missing)}, but {run.latest_path} = {latest} says "
                                   "they were judged and learned")
    gaps = [r for r in range(max(fb.rounds, default=-1)) if r not in fb.rounds]
    if gaps:
        raise RunFolderError(path, f"has no feedback for {_rounds(gaps)}, but holds round {max(fb.rounds)}")
    for r, got in fb.rounds.items():
        expected = "\n".join(dict.fromkeys(cfg.round_prompts(r, got.n_images)))  # a set: its prompts, one per line
        if got.prompt != expected:
            what = "prompt is" if not cfg.prompt_set else f"the prompt set gives round {r}"
            raise RunFolderError(run.config_path, f"{what} {expected!r}, but round {r} was judged for "
                                                  f"{got.prompt!r} ({path.name}); {RESUME_HINT}")
        if r >= len(sizes) or got.n_images != sizes[r]:
            size = "no round" if r >= len(sizes) else f"{sizes[r]} images"
            raise RunFolderError(path, f"round {r} was judged on {got.n_images} images, but the run's budget "
                                       f"gives it {size} (a new budget must keep the judged rounds whole)")
        if got.n_marks not in (0, got.n_images):
            raise RunFolderError(path, f"round {r} has marks for {got.n_marks} of its {got.n_images} images")


def _check_metrics(run: RunFolder, metrics: list[dict], torn: bool, latest: int, fb: LogSummary,
                   plan: ResumePlan) -> None:
    """metrics.jsonl has a line per learned round, agreeing with the log; plan the rewrite it needs."""
    path = run.metrics_path
    for i, m in enumerate(metrics):
        if m["round"] != i:
            raise RunFolderError(path, f"line {i + 1} is round {m['round']}, expected round {i} (one line per "
                                       "round, in order)")
    unjudged = [m["round"] for m in metrics[latest + 1:] if m["round"] not in fb.rounds]
    if unjudged:  # a line is written after its round is judged
        raise RunFolderError(path, f"has a line for round {unjudged[0]}, which {run.feedback_db.name} never "
                                   "recorded as judged")
    kept = metrics[: latest + 1]
    lost = list(range(len(kept), latest + 1))
    if lost and not (torn and len(lost) == 1):
        raise RunFolderError(path, f"has no line for {_rounds(lost)}, but {run.latest_path} = {latest} says "
                                   "they were learned")
    for m in kept:
        _agree(run, m, fb.rounds[m["round"]])
    if lost:
        kept.append(_rebuilt(lost[0], fb.rounds))
        plan.notes.append(f"recovered {path}: its last line was torn; round {lost[0]}'s line is rebuilt from "
                          f"{run.feedback_db.name} (its learning statistics are lost)")
    elif torn:
        plan.notes.append(f"recovered {path}: dropped a torn last line (of a round not learned yet)")
    if torn or len(kept) != len(metrics):
        plan.metrics = kept


def _agree(run: RunFolder, m: dict, got: LoggedRound) -> None:
    """A learned round's metrics line says what the log says of it."""
    pairwise = got.n_marks == 0
    expect = {"images": got.n_images, **({"pairs": got.n_pairs} if pairwise else {"good": got.n_good,
                                                                                   "best": got.best})}
    for key, value in expect.items():
        if key in m and m[key] != value:
            raise RunFolderError(run.feedback_db, f"round {m['round']} has {key} = {value!r}, but "
                                                  f"{run.metrics_path.name} recorded {m[key]!r} when it was learned")


def _rebuilt(r: int, rounds: dict[int, LoggedRound]) -> dict:
    """A learned round's metrics line, from the log (feedback: the log's count, without any relabel queries)."""
    got = rounds[r]
    pairwise = got.n_marks == 0
    return {"round": r, "images": got.n_images, "feedback": sum(rounds[k].n_images for k in range(r + 1)),
            "good": None if pairwise else got.n_good, "good_rate": None if pairwise else got.n_good / got.n_images,
            "best": got.best, **({"pairs": got.n_pairs} if pairwise else {}), "seconds_sampling": None,
            "seconds_feedback": None, "recovered": True}


def _check_rounds(run: RunFolder, latest: int, fb: LogSummary, cfg, sizes: list[int], plan: ResumePlan) -> None:
    """Rounds to come: their trajectories are whole and this run's, or (judged, trajectories gone) their images are
    all there to check a re-sampling against; plan the re-renders, the leftover drops, and warn of lost images."""
    sampled, lost = run.sampled_rounds(), []
    for r in range(len(sizes)):
        judged, traj = r in fb.rounds, r in sampled
        n = fb.rounds[r].n_images if judged else sizes[r]
        if r > latest and traj:
            _check_trajectories(run, r, judged, cfg.round_prompts(r, n), n)
        gone = len(run.missing_images(r, n)) if judged or traj else 0
        if r > latest and judged and not traj:
            if gone:
                raise RunFolderError(run.round_dir(r) / "trajectories.pt", f"is missing and {gone} of round {r}'s "
                                     "image files too, but the round was judged: re-sampling it cannot be checked "
                                     "against the images judged")
            plan.notes.append(f"round {r} was judged but its trajectories are gone: it is sampled again and checked "
                              f"against {run.round_dir(r) / 'images'} before its judgement is used")
        elif gone and traj:
            plan.rerender.append(r)
            plan.notes.append(f"recovered {run.round_dir(r) / 'images'}: re-rendered {gone} missing file(s) "
                              "from trajectories.pt")
        elif gone and r <= latest:
            lost.append(f"{run.round_dir(r).name} ({gone})")
    if lost:
        plan.warnings.append(f"warning: images are missing in {run.path / 'rounds'}: {', '.join(lost)}; those rounds "
                             "are learned and their trajectories dropped, so they cannot be re-rendered (resuming "
                             "does not need them)")
    plan.drop_trajectories = [r for r in sampled if r <= latest]


def _check_trajectories(run: RunFolder, r: int, judged: bool, expected: list[str], n: int) -> None:
    """A round still to learn from: its trajectories.pt is whole, sampled for the round's prompts (``expected``,
    one per image), of the round's size."""
    path = run.round_dir(r) / "trajectories.pt"
    again = "" if judged else f"; round {r} is not judged yet: delete the file to sample it again"
    try:
        prompts, count = trajectories_summary(path)
    except RunFolderError as e:
        raise RunFolderError(path, e.what + again) from None
    if count != n:
        raise RunFolderError(path, f"holds {count} images, but the run's budget gives round {r} {n}{again}")
    if list(prompts) != expected:
        wrong = next(i for i, (a, b) in enumerate(zip(prompts, expected, strict=True)) if a != b)
        raise RunFolderError(run.config_path, f"prompt is {expected[wrong]!r} for round {r}'s image {wrong}, but it "
                                              f"was sampled for {prompts[wrong]!r} ({path}); {RESUME_HINT}")


def _rounds(rs: list[int]) -> str:
    return f"round {rs[0]}" if len(rs) == 1 else "rounds " + ", ".join(map(str, rs))


def _span(first: int, last: int) -> str:
    return "no round" if last < first else f"round {first}" if last == first else f"rounds {first}–{last}"
