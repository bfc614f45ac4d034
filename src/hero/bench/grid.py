"""The benchmark grid: methods × tasks × seeds, each cell one training run evaluated at several feedback budgets.

Choices (and why):
- **One run per cell.** A cell trains once, up to the largest budget; budget b is evaluated at the checkpoint of
  the round in which the cumulative feedback reaches b. Budgets 64/128/256/512 therefore cost one run to 512,
  not four runs. Budgets must be multiples of ``images_per_round`` so "feedback used" is exactly the budget.
- **Self-contained cells.** Each cell also evaluates the base model (feedback 0) with the same evaluation seed,
  so every curve starts at a measured point and any cell can run, fail or resume alone.
- **Paired evaluation.** ``hero.evaluate`` uses one fixed evaluation seed, so every budget, method and seed is
  judged on the same evaluation noise.
- **Defaults**, sized for under an hour on 2 CPU cores: the counting task, seeds 0 and 1, budgets 64/128/256,
  32 images per round, 64 evaluation images, preset ``demo`` (the tuned one for tiny-shapes): 53 min measured
  on 2 idle cores (README "Benchmarks"). Each seed adds ≈ 48 cell-minutes, so ``--seeds 0,1,2`` takes the grid
  past the hour (≈ 75 min); the paper's per-task budget, 512, is one ``--budgets 64,128,256,512`` away (≈ 1.7×
  the time). ``--quick``: HERO and DDPO, one seed, budgets 16/32/48, 16 images per round, 10 sampler steps,
  32 evaluation images: a few minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hero.config import TrainConfig, load_config

DEFAULT_METHODS = ("hero", "d3po", "ddpo", "dpok", "seiko")
QUICK_METHODS = ("hero", "ddpo")


@dataclass
class BenchSpec:
    """What a benchmark measures; written to ``OUT/bench.json`` and read back by the report."""

    methods: list[str]
    tasks: list[str] = field(default_factory=lambda: ["counting"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    budgets: list[int] = field(default_factory=lambda: [64, 128, 256])
    images_per_round: int = 32
    eval_n: int = 64
    preset: str = "demo"
    overrides: list[str] = field(default_factory=list)  # dotted config overrides, as `hero train --set`
    model: str = "tiny-shapes"
    device: str = "cpu"
    target: float | None = None  # the success rate to reach; None: the task's base success + target_gain
    target_gain: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BenchSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def default_spec(quick: bool = False, methods: list[str] | None = None) -> BenchSpec:
    """The default grid, or the ``--quick`` one; methods default to those that exist (see ``split_methods``)."""
    if quick:
        return BenchSpec(methods=list(methods or QUICK_METHODS), seeds=[0], budgets=[16, 32, 48],
                         images_per_round=16, eval_n=32, overrides=["sampler.steps=10", "pg.timesteps_per_traj=3"])
    return BenchSpec(methods=list(methods or DEFAULT_METHODS))


def split_methods(methods: list[str]) -> tuple[list[str], list[str]]:
    """(methods that exist in this install, methods that do not): the default list names some still in progress."""
    from hero.algorithms import ALGORITHMS

    return [m for m in methods if m in ALGORITHMS], [m for m in methods if m not in ALGORITHMS]


@dataclass(frozen=True)
class Cell:
    """One (task, method, seed): one training run plus its evaluations."""

    task: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}/{self.method}/seed{self.seed}"

    def path(self, root: str | Path) -> Path:
        return Path(root) / "cells" / self.task / self.method / f"seed{self.seed}"


def plan(spec: BenchSpec) -> list[Cell]:
    """Every cell, seeds outermost: a grid stopped early still holds every method for the first seeds."""
    return [Cell(t, m, s) for t in spec.tasks for s in spec.seeds for m in spec.methods]


def budget_rounds(spec: BenchSpec) -> dict[int, int]:
    """Budget -> index of the round whose checkpoint has seen exactly that much feedback."""
    return {b: b // spec.images_per_round - 1 for b in sorted(spec.budgets)}


def cell_config(spec: BenchSpec, cell: Cell, run_dir: str | Path) -> TrainConfig:
    """The cell's training config: the preset, the spec's overrides, then the cell's task, method and seed."""
    from hero.toyworld.tasks import TASK_PRESETS, TRANSFER_TASKS

    if cell.task in TRANSFER_TASKS:  # a prompt set: the task's training prompts
        what = {"prompts": [{"prompt": p} for p in TRANSFER_TASKS[cell.task]["train"]]}
    else:
        task = dict(TASK_PRESETS[cell.task])
        what = {"prompt": task.pop("prompt"), **{f"task.{k}": v for k, v in task.items()}}
    # keep_checkpoints=0 last: the budgets' checkpoints must survive training to be evaluated.
    return load_config(spec.preset, [*spec.overrides, "keep_checkpoints=0"], algo=cell.method, feedback="sim",
                       budget=max(spec.budgets), images_per_round=spec.images_per_round, seed=cell.seed,
                       out=str(run_dir), model=spec.model, device=spec.device, **what)


def cell_spec(spec: BenchSpec, cell: Cell, root: str | Path) -> dict:
    """What a cell folder records about itself (``cell_spec.json``); a finished cell is reused only if it matches."""
    cfg = cell_config(spec, cell, cell.path(root) / "run")
    return {"task": cell.task, "method": cell.method, "seed": cell.seed, "eval_n": spec.eval_n,
            "budgets": {str(b): r for b, r in budget_rounds(spec).items()}, "config": cfg.model_dump(mode="json")}


def same_cell_spec(a: dict, b: dict) -> bool:
    """Equal apart from where the folder lives (a moved bench folder still resumes)."""
    def strip(d: dict) -> dict:
        return {**d, "config": {k: v for k, v in d["config"].items() if k != "out"}}

    return strip(a) == strip(b)


def validate(spec: BenchSpec, root: str | Path) -> None:
    """Raise ValueError (one line, naming the problem) before any cell runs."""
    from hero.algorithms import ALGORITHMS
    from hero.toyworld.tasks import TASK_PRESETS, TRANSFER_TASKS

    tasks = [*TASK_PRESETS, *TRANSFER_TASKS]
    for name, items, known in (("method", spec.methods, ALGORITHMS), ("task", spec.tasks, tasks)):
        bad = [x for x in items if x not in known]
        if bad or not items:
            raise ValueError(f"unknown {name} {', '.join(bad) or '(none given)'}; available: {', '.join(known)}")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds) or min(spec.seeds) < 0:
        raise ValueError(f"seeds must be distinct and >= 0, got {spec.seeds}")
    bad = [b for b in spec.budgets if b <= 0 or b % spec.images_per_round]
    if bad or not spec.budgets:
        raise ValueError(f"budgets {bad or '(none given)'} must be positive multiples of images_per_round "
                         f"({spec.images_per_round})")
    if spec.eval_n < 1:
        raise ValueError(f"eval_n must be >= 1, got {spec.eval_n}")
    if spec.target is not None and not 0 < spec.target <= 1:
        raise ValueError(f"target must be a success rate in (0, 1], got {spec.target}")
    for method in spec.methods:  # a bad override, an odd D3PO round size, a method without prompt sets: now
        for task in {spec.tasks[0], *(t for t in spec.tasks if t in TRANSFER_TASKS)}:
            cell_config(spec, Cell(task, method, spec.seeds[0]), Path(root) / "check")
