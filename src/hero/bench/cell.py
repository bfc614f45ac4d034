"""One benchmark cell, in its own process: ``python -m hero.bench.cell CELL_DIR``.

The runner writes ``CELL_DIR/cell_spec.json`` (task, method, seed, the training config, budget -> round, eval n)
and starts this with ``OMP_NUM_THREADS`` set to its share of the cores. The cell then

1. trains (or resumes) the run in ``CELL_DIR/run`` up to the largest budget (``hero.train``: crash-safe),
2. evaluates each budget's round checkpoint with ``hero.evaluate`` (plain and, where the method has it, guided
   noise) and the base model once (feedback 0; taken from a sibling cell of the same task when one has it),
   appending one line per result to ``evals.jsonl`` as it goes,
3. removes the round checkpoints no budget needs, and writes ``cell.json`` last: its presence means "finished",
   and a finished cell is never recomputed.

Wall-clock seconds per round (sampling / learning / update) are in the run's ``metrics.jsonl``; ``cell.json``
adds the peak resident memory, the peak CUDA memory on a GPU, and the seconds spent. A cell resumed across
sessions is worked on by several processes: each appends its own peak (``ru_maxrss``) to ``peak_rss.jsonl``
after training and at the end, and ``cell.json`` takes the largest (a process killed mid-round leaves none; the
one that resumes its rounds does the same work).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

from hero.runs.atomic import atomic_write_text
from hero.runs.lock import hold_lock

SPEC, EVALS, DONE, LOG, PEAKS = "cell_spec.json", "evals.jsonl", "cell.json", "cell.log", "peak_rss.jsonl"


def read_records(path: Path) -> list[dict]:
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


def record_peak_rss(cell_dir: Path) -> float:
    """Append this process's peak resident memory to the cell's log of them; return the largest logged, MiB."""
    append_jsonl(cell_dir / PEAKS, {"pid": os.getpid(), "peak_rss_mb": round(peak_rss_mb(), 1)})
    return max(r["peak_rss_mb"] for r in read_records(cell_dir / PEAKS))


def _train(cfg) -> bool:
    """Train or resume up to the last round; False when the run was already complete."""
    from hero.runs.folder import RunFolder
    from hero.train import train

    run = RunFolder(cfg.out)
    if run.latest_round() + 1 >= cfg.rounds:
        return False
    train(cfg, resume=run.config_path.is_file(), show_progress=False)
    return True


def base_key(spec: dict) -> dict:
    """Everything the base model's plain-noise success depends on (its LoRA is off: not the method or seed)."""
    config = spec["config"]
    keys = ("model", "model_config_dir", "prompt", "prompts", "task", "sampler", "precision", "device")
    return {"n": spec["eval_n"], **{k: config.get(k) for k in keys}}


def sibling_base(cell_dir: Path, key: dict) -> tuple[str, dict] | None:
    """(sibling, its budget-0 record) of the base model already evaluated by another cell of this task, same key.

    Every cell of a task in one bench evaluates the same base model on the same evaluation noise, so the first
    to finish it saves the others that sampling (one evaluation in five). Two cells that start together may
    both compute it; the evaluation seed makes them agree.
    """
    for evals in sorted(cell_dir.parent.parent.glob("*/seed*/" + EVALS)):
        if evals.parent.resolve() == cell_dir.resolve():
            continue
        for e in read_records(evals):
            if e.get("budget") == 0 and e.get("base_key") == key and "shared_from" not in e:
                return f"{evals.parent.parent.name}/{evals.parent.name}", e
    return None


def _evaluate(cell_dir: Path, spec: dict, run_dir: Path) -> float:
    """Evaluate every budget not yet in evals.jsonl; returns the seconds spent."""
    from hero.evaluate import evaluate
    from hero.runs.folder import RunFolder
    from hero.toyworld.tasks import TRANSFER_TASKS

    path, n, t_all, key = cell_dir / EVALS, spec["eval_n"], time.perf_counter(), base_key(spec)
    feedback_after = {m["round"]: m["feedback"] for m in RunFolder(run_dir).metrics()}
    for budget, r in sorted((int(b), r) for b, r in spec["budgets"].items()):
        done = {e["budget"] for e in read_records(path)}
        if budget in done:
            continue
        if spec["task"] in TRANSFER_TASKS:
            shared = None if 0 in done else sibling_base(cell_dir, key)
            if shared:  # the same base model, prompts and evaluation seeds: its per-prompt record is this cell's too
                append_jsonl(path, {**shared[1], "shared_from": shared[0]})
                done.add(0)
            t0 = time.perf_counter()
            base, record = _evaluate_transfer(run_dir, TRANSFER_TASKS[spec["task"]], n, r, 0 not in done)
            if base is not None:
                append_jsonl(path, {"budget": 0, "round": None, "feedback": 0, "n": n, **base, "base_key": key})
            append_jsonl(path, {"budget": budget, "round": r, "feedback": feedback_after[r], "n": n, **record,
                                "seconds": time.perf_counter() - t0, "with_base": base is not None})
            continue
        shared = None if 0 in done else sibling_base(cell_dir, key)
        t0 = time.perf_counter()
        res = evaluate(run_dir, n=n, round_index=r, include_base=0 not in done,
                       base_plain=shared[1]["plain"] if shared else None)
        seconds = time.perf_counter() - t0
        if "base_plain" in res:  # feedback 0: the base model under plain noise (no feedback, so no guidance)
            base = {"budget": 0, "round": None, "feedback": 0, "n": n, "plain": res["base_plain"], "base_key": key}
            if not shared:  # sampled here: its diversity too (memorisation is of this cell's images, so not kept)
                base["diversity"] = {"plain": res["diversity"]["base_plain"]}
            append_jsonl(path, {**base, "shared_from": shared[0]} if shared else base)
        record = {"budget": budget, "round": r, "feedback": feedback_after[r], "n": n, "plain": res["plain"],
                  "seconds": seconds,  # with_base: these seconds include sampling the base model
                  "with_base": "base_plain" in res and (not shared or "base_guided" in res)}
        record.update({name: res[name] for name in ("guided", "base_guided") if name in res})
        record.update(_sample_quality(res, ("plain", "guided")))
        append_jsonl(path, record)
    return time.perf_counter() - t_all


def _sample_quality(res: dict, conditions: tuple[str, ...]) -> dict:
    """The standard error, diversity and memorisation of ``res`` (``hero.evaluate``) for the conditions it has."""
    return {key: {c: res[key][c] for c in conditions if c in res.get(key, {})}
            for key in ("stderr", "diversity", "memorisation")}


def _evaluate_transfer(run_dir: Path, task: dict, n: int, r: int, with_base: bool) -> tuple[dict | None, dict]:
    """A transfer cell's evaluation of round ``r``: success on the training prompts (``plain``, ``guided``) and on
    the held-out ones (``held_out_plain``, ``held_out_guided`` never: no guided noise for an unjudged prompt),
    each the mean over its prompts, n images per prompt; and the base model's (budget 0) when ``with_base``."""
    from hero.evaluate import evaluate
    from hero.prompts import PromptSpec

    res = evaluate(run_dir, n=n, round_index=r, include_base=with_base,
                   prompts=[PromptSpec(prompt=p) for p in task["train"] + task["held_out"]])
    rows = res["prompts"]

    def mean(prompts: list[str], key: str) -> float | None:
        have = [rows[p][key] for p in prompts if key in rows[p]]
        return float(sum(have) / len(have)) if len(have) == len(prompts) else None

    record = {"plain": mean(task["train"], "plain"), "held_out_plain": mean(task["held_out"], "plain"),
              "per_prompt": {p: rows[p]["plain"] for p in rows}}
    if mean(task["train"], "guided") is not None:
        record["guided"] = mean(task["train"], "guided")
    base = None
    if with_base:
        base = {"plain": mean(task["train"], "base_plain"), "held_out_plain": mean(task["held_out"], "base_plain"),
                "per_prompt": {p: rows[p]["base_plain"] for p in rows}}
    return base, record


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
    with hold_lock(cell_dir):  # evals.jsonl and the pruning have one writer too, not only the run
        t0 = time.perf_counter()
        trained = _train(cfg)
        t1 = time.perf_counter()
        record_peak_rss(cell_dir)
        seconds_eval = _evaluate(cell_dir, spec, run_dir)
        _prune(run_dir, set(spec["budgets"].values()))
    info = {"task": spec["task"], "method": spec["method"], "seed": spec["seed"], "status": "done",
            "trained_this_session": trained, "seconds_train": t1 - t0, "seconds_eval": seconds_eval,
            "peak_rss_mb": record_peak_rss(cell_dir), "threads": torch.get_num_threads(), "device": cfg.device,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if torch.cuda.is_available() and cfg.device.startswith("cuda"):
        info["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    atomic_write_text(cell_dir / DONE, json.dumps(info, indent=1) + "\n")
    return info


def exit_with_parent(parent: int | None = None, poll_s: float = 2.0) -> None:
    """End this process when ``parent`` (default: the one that started it) dies: a killed bench leaves no cell.

    A cell left running would go on writing beside the cell a rerun starts; ending it this way is as safe as a
    SIGKILL, which every record of the run folder survives. The runner passes its pid (``HERO_BENCH_PID``), so a
    bench that died while this process was starting is seen too.
    """
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    from hero.quiet import quiet_libraries

    quiet_libraries()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m hero.bench.cell CELL_DIR")
    exit_with_parent(int(os.environ["HERO_BENCH_PID"]) if "HERO_BENCH_PID" in os.environ else None)
    print(json.dumps(run_cell(args[0])))


if __name__ == "__main__":
    main()
