"""`hero bench`: methods × tasks × seeds × feedback budgets against the simulated human, and a readable report.

- ``grid``: what a benchmark measures (``BenchSpec``), its cells, each cell's training config;
- ``cell``: one cell in its own process (train once to the largest budget, evaluate every budget);
- ``runner``: the cells in parallel, resumable (a finished cell is never recomputed);
- ``results`` / ``plots`` / ``report``: numbers read from the cells' logs only, PNG plots, Markdown/HTML/LaTeX;
- ``compute``: images per second (rollout with log-probs vs the plain diffusers pipeline), update steps per
  second, FLOP rate and the fraction of the GPU's peak (``hero bench compute``).

Nothing is imported until used: ``hero.cli`` imports ``hero.bench.cli`` (typer only) at start-up.
"""

__all__ = ["BenchSpec", "default_spec", "run_bench", "write_report"]

_WHERE = {"BenchSpec": "grid", "default_spec": "grid", "run_bench": "runner", "write_report": "report"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"hero.bench.{_WHERE[name]}"), name)
