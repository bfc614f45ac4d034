"""Run the grid: every unfinished cell in its own process, several at a time where the machine allows.

- **Parallel.** ``jobs`` processes at once (default: one per core on CPU, capped by free memory at ~1.5 GiB
  a cell; one on a GPU, which a second run would only share), each with ``cores // jobs`` torch threads
  (``OMP_NUM_THREADS``), so the cells do not fight over the cores.
- **Resumable.** A cell with ``cell.json`` is skipped; an unfinished one resumes its training run and
  evaluates only the budgets missing from its ``evals.jsonl``. A folder whose settings differ from the ones
  asked for (another preset, other budgets) is refused with a clear message rather than silently mixed.
- A failed cell does not stop the others; its ``cell.log`` holds the traceback, and the report is written from
  whatever finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hero.bench.cell import DONE, LOG, SPEC
from hero.bench.grid import BenchSpec, Cell, cell_spec, plan, same_cell_spec, validate
from hero.runs.atomic import atomic_write_text

MEMORY_PER_CELL_GIB = 1.5


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_jobs(n_cells: int, device: str) -> int:
    """Cells at once: one on a GPU; on CPU one per core, as memory allows."""
    if device != "cpu":
        return 1
    jobs = cpu_cores()
    try:
        import psutil

        jobs = min(jobs, max(1, int(psutil.virtual_memory().available / 2**30 / MEMORY_PER_CELL_GIB)))
    except ImportError:
        pass
    return max(1, min(jobs, n_cells))


def prepare(spec: BenchSpec, out: Path) -> tuple[list[Cell], list[Cell]]:
    """Write bench.json and each new cell's cell_spec.json; return (cells to run, finished cells)."""
    validate(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.json", json.dumps(spec.to_dict(), indent=1) + "\n")
    todo, finished = [], []
    for cell in plan(spec):
        folder, wanted = cell.path(out), cell_spec(spec, cell, out)
        if (folder / SPEC).is_file():
            if not same_cell_spec(json.loads((folder / SPEC).read_text()), wanted):
                raise ValueError(f"{folder} was run with other settings (preset, overrides, budgets or eval n): "
                                 "choose another --out, or remove that folder to recompute it")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / SPEC, json.dumps(wanted, indent=1) + "\n")
        (finished if (folder / DONE).is_file() else todo).append(cell)
    return todo, finished


def _run_one(folder: Path, threads: int) -> tuple[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1",
           "HERO_BENCH_PID": str(os.getpid())}  # the cell ends if this process dies (hero.bench.cell)
    t0 = time.perf_counter()
    with (folder / LOG).open("a") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} threads={threads}\n")
        log.flush()
        rc = subprocess.run([sys.executable, "-m", "hero.bench.cell", str(folder)], stdout=log,
                            stderr=subprocess.STDOUT, env=env).returncode
    return rc, time.perf_counter() - t0


def run_bench(spec: BenchSpec, out: str | Path, jobs: int | None = None,
              echo: Callable[[str], None] = print) -> dict:
    """Run every unfinished cell, then write the report; returns a summary (also the CLI's JSON line)."""
    from hero.bench.report import write_report

    out, t0 = Path(out), time.perf_counter()
    todo, finished = prepare(spec, out)
    for cell in finished:
        echo(f"skip {cell.name} (finished)")
    jobs = jobs or default_jobs(len(todo), spec.device)
    threads = max(1, cpu_cores() // jobs) if spec.device == "cpu" else max(1, cpu_cores())
    if todo:
        echo(f"running {len(todo)} cell(s), {jobs} at a time, {threads} thread(s) each -> {out}")
    failed = []

    def work(cell: Cell) -> None:
        echo(f"start {cell.name}")
        rc, seconds = _run_one(cell.path(out), threads)
        if rc == 0 and (cell.path(out) / DONE).is_file():
            echo(f"done  {cell.name} in {seconds:.0f} s")
        else:
            failed.append(cell.name)
            echo(f"FAILED {cell.name} (exit {rc}): see {cell.path(out) / LOG}")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(work, todo))
    summary = {"out": str(out), "cells": len(todo) + len(finished), "ran": len(todo) - len(failed),
               "skipped": len(finished), "failed": failed, "jobs": jobs, "threads": threads, "cores": cpu_cores(),
               "seconds": round(time.perf_counter() - t0, 1), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with (out / "sessions.jsonl").open("a") as f:  # the report shows how long each `hero bench` call took
        f.write(json.dumps(summary) + "\n")
    summary["report"] = str(write_report(out))
    return summary
