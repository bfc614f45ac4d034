"""The report's PNG plots (matplotlib, Agg backend: no display needed), drawn from ``results.summarise``'s dict."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PARTS = ("sampling", "learning", "update", "judging")


def _colours(methods: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _panel(ax, task: dict, kind: str, colours: dict) -> None:
    for method, m in task["methods"].items():
        x = m["feedback_used"]  # what the method really spent (HERD's relabels are judged too), not the budget
        series = m[kind]
        dashed = kind == "own" and m["guided"] is None  # a method without guided noise: its plain curve
        label = f"{method} (plain noise)" if dashed else method
        ax.plot(x, series["mean"], marker="o", ms=3, lw=1.2 if dashed else 1.8, ls="--" if dashed else "-",
                color=colours[method], label=label)
        if len(m["seeds"]) > 1:
            ax.fill_between(x, series["min"], series["max"], color=colours[method], alpha=0.15, lw=0)
    ax.axhline(task["base"], color="grey", ls=":", lw=1, label="base model")
    ax.axhline(task["target"], color="black", ls="--", lw=0.8, label=f"target {task['target']:.2f}")
    ax.set_xticks(task["feedback"])
    ax.set_xlabel("feedback (images judged)")
    ax.grid(alpha=0.3)


def _training_panel(ax, task: dict, colours: dict) -> None:
    for method, m in task["methods"].items():
        series = m["train_good"]
        if series is None:  # a pairwise method (D3PO) marks no image good
            continue
        ax.plot(m["train_feedback"], series["mean"], marker=".", lw=1.2, color=colours[method], label=method)
        if len(m["seeds"]) > 1:
            ax.fill_between(m["train_feedback"], series["min"], series["max"], color=colours[method], alpha=0.15, lw=0)
    ax.axhline(task["base"], color="grey", ls=":", lw=1)
    ticks = sorted({f for m in task["methods"].values() for f in m["train_feedback"]})
    if len(ticks) <= 12:
        ax.set_xticks(ticks)
    ax.set_xlabel("feedback before the round")
    ax.set_title("judged good during training (own noise)")
    ax.grid(alpha=0.3)


def success_plot(task_name: str, task: dict, path: Path) -> Path:
    """Success vs feedback for one task: held out under plain noise, under each method's own noise, and the share
    judged good in each training round."""
    colours = _colours(list(task["methods"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    _panel(axes[0], task, "plain", colours)
    _panel(axes[1], task, "own", colours)
    _training_panel(axes[2], task, colours)
    axes[0].set_title("held out, plain noise z_T ~ N(0, I)")
    axes[1].set_title("held out, own noise (HERO: feedback-guided)")
    axes[0].set_ylabel("success rate (judge)")
    seeds = max(len(m["seeds"]) for m in task["methods"].values())
    band = f"; band: min-max over {seeds} seeds" if seeds > 1 else ""
    fig.suptitle(f"{task_name}: \"{task['prompt']}\" (mean{band})")
    axes[1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def seconds_plot(summary: dict, path: Path) -> Path:
    """Seconds per round, stacked by part, one bar per task × method."""
    rows = [(f"{t} / {m}" if len(summary["tasks"]) > 1 else m, s["seconds"])
            for t, task in summary["tasks"].items() for m, s in task["methods"].items()]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.4))
    cmap = plt.get_cmap("Set2")
    for i, part in enumerate(PARTS):
        left = [sum(sec[p] for p in PARTS[:i]) for _, sec in rows]
        ax.barh([name for name, _ in rows], [sec[part] for _, sec in rows], left=left, color=cmap(i), label=part)
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds per round ({summary['spec']['images_per_round']} images)")
    ax.legend(fontsize=8, ncols=len(PARTS), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
