"""One benchmark cell, in its own process: ``python -m hero.bench.cell CELL_DIR``.

The runner writes ``CELL_DIR/cell_spec.json`` (task, method, seed, the training config, budget -> round, eval n)
and starts this with ``OMP_NUM_THREADS`` set to its share of the cores. The cell then

1. trains (or resumes) the run in ``CELL_DIR/run`` up to the largest budget (``hero.train``: crash-safe),
2. evaluates each budget's round checkpoint with ``hero.evaluate`` (plain and, where the method has it, guided
   noise) and the base model once (feedback 0), appending one line per result to ``evals.jsonl`` as it goes,
3. removes the round checkpoints no budget needs, and writes ``cell.json`` last: its presence means "finished",
   and a finished cell is never recomputed.

Wall-clock seconds per round (sampling / learning / update) are in the run's ``metrics.jsonl``; ``cell.json``
adds the process's peak resident memory (``ru_maxrss``), the peak CUDA memory on a GPU, and the seconds spent.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from hero.runs.atomic import atomic_write_text

SPEC, EVALS, DONE, LOG = "cell_spec.json", "evals.jsonl", "cell.json", "cell.log"


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of a file; a line cut short by a crash is ignored (its result is simply recomputed)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def append_jsonl(path: Path, record: dict) -> None:
    """Append one line and fsync it: a result once written survives a crash."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _train(cfg) -> bool:
    """Train or resume up to the last round; False when the run was already complete."""
    from hero.runs.folder import RunFolder
    from hero.train import train

    run = RunFolder(cfg.out)
    if run.latest_round() + 1 >= cfg.rounds:
        return False
    train(cfg, resume=run.config_path.is_file(), show_progress=False)
    return True


def _evaluate(cell_dir: Path, spec: dict, run_dir: Path) -> float:
    """Evaluate every budget not yet in evals.jsonl; returns the seconds spent."""
    from hero.evaluate import evaluate
    from hero.runs.folder import RunFolder

    path, n, t_all = cell_dir / EVALS, spec["eval_n"], time.perf_counter()
    feedback_after = {m["round"]: m["feedback"] for m in RunFolder(run_dir).metrics()}
    for budget, r in sorted((int(b), r) for b, r in spec["budgets"].items()):
        done = {e["budget"] for e in read_jsonl(path)}
        if budget in done:
            continue
        t0 = time.perf_counter()
        res = evaluate(run_dir, n=n, round_index=r, include_base=0 not in done)
        seconds = time.perf_counter() - t0
        if "base_plain" in res:  # feedback 0: the base model under plain noise (no feedback, so no guidance)
            append_jsonl(path, {"budget": 0, "round": None, "feedback": 0, "n": n, "plain": res["base_plain"]})
        record = {"budget": budget, "round": r, "feedback": feedback_after[r], "n": n, "plain": res["plain"],
                  "seconds": seconds, "with_base": "base_plain" in res}  # seconds include the base model's
        for key in ("guided", "base_guided"):
            if key in res:
                record[key] = res[key]
        append_jsonl(path, record)
    return time.perf_counter() - t_all


def _prune(run_dir: Path, keep: set[int]) -> None:
    """Drop round checkpoints no budget needs (the budgets' stay, for re-evaluation with a larger n)."""
    for folder in (run_dir / "checkpoints").glob("round_*"):
        if int(folder.name.split("_")[1]) not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def run_cell(cell_dir: str | Path) -> dict:
    """Train, evaluate and record one cell (see the module docstring); returns what ``cell.json`` holds."""
    import torch

    from hero.config import TrainConfig

    cell_dir = Path(cell_dir)
    spec = json.loads((cell_dir / SPEC).read_text())
    run_dir = cell_dir / "run"
    cfg = TrainConfig.model_validate({**spec["config"], "out": str(run_dir)})
    t0 = time.perf_counter()
    trained = _train(cfg)
    t1 = time.perf_counter()
    seconds_eval = _evaluate(cell_dir, spec, run_dir)
    _prune(run_dir, set(spec["budgets"].values()))
    info = {"task": spec["task"], "method": spec["method"], "seed": spec["seed"], "status": "done",
            "trained_this_session": trained, "seconds_train": t1 - t0, "seconds_eval": seconds_eval,
            "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(), "device": cfg.device,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if torch.cuda.is_available() and cfg.device.startswith("cuda"):
        info["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    atomic_write_text(cell_dir / DONE, json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> None:
    from hero.cli import quiet_libraries

    quiet_libraries()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m hero.bench.cell CELL_DIR")
    print(json.dumps(run_cell(args[0])))


if __name__ == "__main__":
    main()
