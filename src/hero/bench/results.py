"""Everything the report shows, computed from the cell folders' logs only: ``evals.jsonl``, ``run/metrics.jsonl``
and ``cell.json`` of every finished cell listed in ``bench.json`` (no number is typed in anywhere else).

Definitions used by the report:
- a curve's point 0 is the base model under plain noise (no feedback yet, so no guided noise either);
- **judged good during training**: the share of each round's images the simulated human called good, at the
  feedback spent before that round (free: it is the feedback itself; not held out, and under the method's own
  noise). Held-out success after *every* round: give every multiple of images_per_round as a budget;
- **own noise**: the starting noise each method samples with after training: HERO's feedback-guided noise,
  N(0, I) for methods without one (their "own noise" curve is their plain curve);
- **target**: ``--target`` if given, else the task's base success (mean over its cells) + ``target_gain``;
- **feedback to target**: the first evaluated budget at which the *seed-mean* success reaches the target
  (no interpolation between budgets), None when no budget reaches it; **× best** divides it by the least any
  method on the task needed;
- **seconds per round**: wall-clock means over all rounds of all seeds (the sampling of a round resumed with its
  images already sampled is unknown and left out), split as the run logged them:
  sampling (rollout with log-probs), learning (reward / representation / value learning), update (the
  policy update), judging (the simulated human).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hero.bench.cell import DONE, EVALS, read_records
from hero.bench.grid import BenchSpec, Cell, plan
from hero.runs.folder import mean_seconds

SECONDS = {"sampling": "seconds_sampling", "learning": "seconds_representation", "update": "seconds_update",
           "judging": "seconds_feedback"}


@dataclass
class CellResult:
    cell: Cell
    evals: dict[int, dict]  # budget (0: the base model) -> evaluation record
    metrics: list[dict]  # the run's metrics.jsonl, one record per round
    info: dict  # cell.json


def load_cells(root: str | Path) -> tuple[BenchSpec, list[CellResult]]:
    """The spec and every finished cell that holds an evaluation for each budget."""
    root = Path(root)
    spec = BenchSpec.from_dict(json.loads((root / "bench.json").read_text()))
    out = []
    for cell in plan(spec):
        folder = cell.path(root)
        if not (folder / DONE).is_file():
            continue
        evals = {e["budget"]: e for e in read_records(folder / EVALS)}
        if any(b not in evals for b in [0, *spec.budgets]):
            continue
        metrics = read_records(folder / "run" / "metrics.jsonl")
        out.append(CellResult(cell, evals, metrics, json.loads((folder / DONE).read_text())))
    return spec, out


def _stats(per_seed: list[list[float]]) -> dict:
    a = np.asarray(per_seed, dtype=float)
    sd = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
    return {"mean": a.mean(axis=0).tolist(), "sd": sd.tolist(), "min": a.min(axis=0).tolist(),
            "max": a.max(axis=0).tolist(), "per_seed": a.tolist()}


def feedback_to_reach(feedback: list[int], mean: list[float], target: float) -> int | None:
    """The first feedback count whose seed-mean success is >= target; None if none is."""
    return next((f for f, m in zip(feedback, mean, strict=True) if m >= target - 1e-12), None)


def _ratio(needed: int | None, best: int | None) -> float | None:
    return None if needed is None or not best else needed / best


def _seconds(cells: list[CellResult]) -> dict:
    rounds = [m for c in cells for m in c.metrics]
    out = {k: mean_seconds(rounds, key) for k, key in SECONDS.items()}
    out["total"] = sum(out.values())
    evals = [e for c in cells for b, e in c.evals.items() if b > 0 and "seconds" in e]
    alone = [e["seconds"] for e in evals if not e.get("with_base")] or [e["seconds"] for e in evals]
    out["eval"] = float(np.mean(alone)) if alone else 0.0  # per evaluation, without the base model's share
    return out


QUALITY = {"pairwise": "diversity", "duplicate_rate": "diversity", "nn_distance": "memorisation",
           "copy_rate": "memorisation"}


def _quality(records: list[dict]) -> dict:
    """Seed means of the diversity and memorisation measures (``hero.diversity``) and of the binomial standard
    error, per condition; a measure that some record lacks (cells evaluated before they were kept) is left out."""
    out = {}
    for cond in ("plain", "guided"):
        columns = {name: [e[group][cond][name] for e in records if cond in e.get(group, {})]
                   for name, group in QUALITY.items()}
        columns["stderr"] = [e["stderr"][cond] for e in records if cond in e.get("stderr", {})]
        row = {name: float(np.mean(v)) for name, v in columns.items() if v and len(v) == len(records)}
        if row:
            out[cond] = row
    return out


def _method_summary(spec: BenchSpec, cells: list[CellResult], points: list[int]) -> dict:
    plain = [[c.evals[b]["plain"] for b in points] for c in cells]
    guided = None
    if all("guided" in c.evals[b] for c in cells for b in points[1:]):
        guided = _stats([[c.evals[0]["plain"]] + [c.evals[b]["guided"] for b in points[1:]] for c in cells])
    result = {"seeds": [c.cell.seed for c in cells], "plain": _stats(plain), "guided": guided,
              "feedback_used": [float(np.mean([c.evals[b]["feedback"] for c in cells])) for b in points],
              "seconds": _seconds(cells), "rounds": len(cells[0].metrics),
              "peak_rss_mb": max(c.info.get("peak_rss_mb", 0.0) for c in cells)}
    cuda = [c.info["cuda_peak_mb"] for c in cells if "cuda_peak_mb" in c.info]
    if cuda:
        result["cuda_peak_mb"] = max(cuda)
    result["own"] = guided or result["plain"]
    result["quality"] = _quality([c.evals[points[-1]] for c in cells])
    if all("held_out_plain" in c.evals[b] for c in cells for b in points):  # a transfer task: never-trained prompts
        result["held_out"] = _stats([[c.evals[b]["held_out_plain"] for b in points] for c in cells])
    # Free per-round success: the share of each round's images the simulated human judged good (sampled with the
    # method's own noise, before that round's update); absent for pairwise methods (D3PO), which mark no images.
    rates = [[m.get("good_rate") for m in c.metrics] for c in cells]
    same_rounds = len({len(r) for r in rates}) == 1
    result["train_good"] = _stats(rates) if same_rounds and all(x is not None for r in rates for x in r) else None
    result["train_feedback"] = [m["feedback"] - m["images"] for m in cells[0].metrics]
    return result


def summarise(root: str | Path, target: float | None = None, target_gain: float | None = None) -> dict:
    """The report's numbers as one JSON-ready dict (also written as ``summary.json``).

    ``target``/``target_gain`` replace the bench's own (``bench.json``) for this summary only: the same cells
    read against another bar.
    """
    from hero.toyworld.tasks import TASK_PRESETS, TRANSFER_TASKS

    root = Path(root)
    spec, cells = load_cells(root)
    if target is not None or target_gain is not None:
        spec.target, spec.target_gain = target, spec.target_gain if target_gain is None else target_gain
    points = [0, *sorted(spec.budgets)]
    tasks = {}
    for task in spec.tasks:
        methods = {}
        for method in spec.methods:
            mine = [c for c in cells if (c.cell.task, c.cell.method) == (task, method)]
            if mine:
                methods[method] = _method_summary(spec, mine, points)
        if not methods:
            continue
        base = float(np.mean([s for m in methods.values() for s in np.asarray(m["plain"]["per_seed"])[:, 0]]))
        target = spec.target if spec.target is not None else min(1.0, base + spec.target_gain)
        for m in methods.values():
            for kind in ("plain", "own"):
                m[f"needed_{kind}"] = feedback_to_reach(points, m[kind]["mean"], target)
        for kind in ("plain", "own"):  # each method's feedback over the least any method needed (1.00×: the best)
            reached = [m[f"needed_{kind}"] for m in methods.values() if m[f"needed_{kind}"] is not None]
            for m in methods.values():
                m[f"ratio_{kind}"] = _ratio(m[f"needed_{kind}"], min(reached, default=None))
        if task in TRANSFER_TASKS:
            prompt, options = ", ".join(TRANSFER_TASKS[task]["train"]), {
                "held out": ", ".join(TRANSFER_TASKS[task]["held_out"])}
        else:
            prompt, options = TASK_PRESETS[task]["prompt"], {k: v for k, v in TASK_PRESETS[task].items()
                                                             if k != "prompt"}
        base_div = [c.evals[0]["diversity"]["plain"] for c in cells if c.cell.task == task
                    and "plain" in c.evals[0].get("diversity", {})]
        tasks[task] = {"prompt": prompt, "options": options, "base": base, "target": target, "feedback": points,
                       "methods": methods, "base_diversity": base_div[0] if base_div else None}
    compute = root / "compute.json"
    return {"spec": spec.to_dict(), "tasks": tasks, "cells": len(cells),
            "sessions": read_records(root / "sessions.jsonl"),
            "compute": json.loads(compute.read_text()) if compute.is_file() else None}
