"""The bench report: ``report.md`` and a self-contained ``report.html`` (PNG plots embedded), ``table.tex`` (the
short table, for a paper), ``summary.json`` (every number shown) and the PNGs, all written into the bench folder.

Every number comes from ``results.summarise``, which reads only the cells' logs. The report is one list of
blocks rendered twice (Markdown, HTML), so the two never disagree. ``hero bench report OUT`` rewrites it.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from hero.bench.plots import PARTS, seconds_plot, success_plot
from hero.bench.results import summarise
from hero.runs.atomic import atomic_write_text


def rate(series: dict, i: int) -> str:
    """Seed mean (± sample standard deviation over seeds when there are several) at point i."""
    mean, sd = series["mean"][i], series["sd"][i]
    return f"{mean:.3f} ± {sd:.3f}" if len(series["per_seed"]) > 1 else f"{mean:.3f}"


def spent(method: dict, i: int, nominal: int) -> str:
    """" (N fb)" when the method spent other feedback than the budget at point i (HERD's relabels cost extra)."""
    used = method["feedback_used"][i]
    return "" if round(used) == nominal else f" ({used:.0f} fb)"


def needed(value: int | None, most: int) -> str:
    return f"> {most}" if value is None else str(value)


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _settings(summary: dict) -> list[tuple]:
    s = summary["spec"]
    last = summary["sessions"][-1] if summary["sessions"] else None
    run = (f"Last `hero bench` call: {last['seconds']:.0f} s wall-clock ({last['ran']} cell(s) run, "
           f"{last['skipped']} skipped; {last['jobs']} at a time × {last['threads']} thread(s) on {last['cores']} "
           "core(s)).") if last else ""
    return [("h1", "hero bench report"),
            ("p", f"Model {s['model']} on {s['device']}, preset {s['preset']}"
                  + (f" with {', '.join(s['overrides'])}" if s["overrides"] else "")
                  + f"; {s['images_per_round']} images per round; feedback budgets {', '.join(map(str, s['budgets']))}"
                  + f"; seeds {', '.join(map(str, s['seeds']))}; success judged on {s['eval_n']} images per "
                  "evaluation by the simulated human (the toy-world judge), with one fixed evaluation seed."),
            ("p", f"{summary['cells']} finished cell(s). {run}")]


def _task_blocks(name: str, task: dict, image: str) -> list[tuple]:
    x = task["feedback"]
    head = ["method", "seeds", *[f"{f}" for f in x]]
    methods = task["methods"].items()
    plain = [[m, str(len(d["seeds"])), *[rate(d["plain"], i) + spent(d, i, f) for i, f in enumerate(x)]]
             for m, d in methods]
    guided = [[m, str(len(d["seeds"])), *[rate(d["guided"], i) for i in range(len(x))]]
              for m, d in methods if d["guided"] is not None]
    options = "".join(f"; {k.replace('_', ' ')}: {v}" for k, v in task["options"].items())
    blocks = [("h2", f"Task {name}: \"{task['prompt']}\"{options}"), ("img", image, f"success vs feedback, {name}"),
              ("p", f"Base model success {task['base']:.3f}; target {task['target']:.3f}. Columns: feedback "
                    "(images judged); cells: success rate, mean ± standard deviation over seeds (band in the plot: "
                    "min-max). At 0 feedback there is no guided noise yet, so both panels start at the base. "
                    "\"(N fb)\": the feedback the method really spent by then, where it differs from the budget "
                    "(HERD's relabels are judged too)."),
              ("h3", "Success under plain noise"), ("table", head, plain)]
    if guided:
        blocks += [("h3", "Success under feedback-guided noise"), ("table", head, guided)]
    blocks += _quality_blocks(task)
    held = [[m, str(len(d["seeds"])), *[rate(d["held_out"], i) for i in range(len(x))]]
            for m, d in methods if d.get("held_out") is not None]
    if held:
        blocks += [("h3", "Transfer: success on the held-out prompts (never trained on), plain noise"),
                   ("p", "The tables above are the mean over the training prompts; this one the mean over prompts "
                         "the run never sampled. Column 0: the base model on the same seeds."),
                   ("table", head, held)]
    judged = [(m, d) for m, d in methods if d["train_good"] is not None]
    if judged:
        x_train = judged[0][1]["train_feedback"]
        rows = [[m, str(len(d["seeds"])), *[rate(d["train_good"], i) for i in range(len(x_train))]] for m, d in judged]
        blocks += [("h3", "Judged good during training"),
                   ("p", "The share of each round's images the simulated human called good (the feedback itself: "
                         "sampled with the method's own noise before that round's update, not held out). Columns: "
                         "feedback spent before the round."),
                   ("table", ["method", "seeds", *[str(f) for f in x_train]], rows)]
    return blocks


def _quality_blocks(task: dict) -> list[tuple]:
    """Diversity and memorisation beside the success at the largest budget: a collapsed method shows here."""
    def num(row: dict, key: str, fmt: str = ".3f") -> str:
        return format(row[key], fmt) if key in row else "—"

    base = task["base_diversity"] or {}
    rows = [["base model", "plain", f"{task['base']:.3f}", num(base, "pairwise"), num(base, "duplicate_rate", ".2f"),
             "—", "—"]]
    for m, d in task["methods"].items():
        for cond, q in d["quality"].items():
            success = d[cond]["mean"][-1]
            rows.append([m, cond, f"{success:.3f}" + (f" ± {q['stderr']:.3f}" if "stderr" in q else ""),
                         num(q, "pairwise"), num(q, "duplicate_rate", ".2f"), num(q, "nn_distance"),
                         num(q, "copy_rate", ".2f")])
    if len(rows) == 1:
        return []
    return [("h3", f"Diversity and memorisation at {task['feedback'][-1]} feedback"),
            ("p", "Seed means (hero.diversity, pixels in [0, 1]): pairwise, the mean RMS distance between two "
                  "evaluation samples; duplicates, the share with a near-copy (RMS < 0.05) among the others; "
                  "nearest judged-good, the mean RMS distance from a sample to the closest image judged good during "
                  "the run; copies, the share closer than 0.05 to one. ± : the mean binomial standard error of one "
                  "seed's success. A method that collapses onto a few images has low pairwise and nearest distances."),
            ("table", ["model", "noise", "success", "pairwise", "duplicates", "nearest judged-good", "copies"], rows)]


def _target_blocks(summary: dict) -> list[tuple]:
    rows = []
    for name, task in summary["tasks"].items():
        most = task["feedback"][-1]
        for m, d in task["methods"].items():
            rows.append([name, m, f"{task['target']:.3f}", needed(d["needed_plain"], most), ratio(d["ratio_plain"]),
                         needed(d["needed_own"], most), ratio(d["ratio_own"])])
    return [("h2", "Feedback needed to reach the target"),
            ("p", "The first budget at which the seed-mean success reaches the target (no interpolation); "
                  "\"> N\": not reached within the largest budget. × best: that feedback divided by the least any "
                  "method on the task needed (1.00×: the best). Own noise: feedback-guided for HERO, plain N(0, I) "
                  "for methods without guided noise."),
            ("table", ["task", "method", "target", "plain: feedback", "plain: × best", "own noise: feedback",
                       "own noise: × best"], rows)]


def _seconds_blocks(summary: dict) -> list[tuple]:
    rows = []
    for name, task in summary["tasks"].items():
        for m, d in task["methods"].items():
            sec = d["seconds"]
            memory = f"{d['peak_rss_mb']:.0f}" + (f" (GPU {d['cuda_peak_mb']:.0f})" if "cuda_peak_mb" in d else "")
            rows.append([name, m, str(d["rounds"]), *[f"{sec[p]:.2f}" for p in (*PARTS, "total")],
                         f"{sec['eval']:.1f}", memory])
    return [("h2", "Seconds per round"), ("img", "seconds.png", "seconds per round"),
            ("p", "Wall-clock means over all rounds and seeds, as each run logged them: sampling (rollout with "
                  "log-probs), learning (reward / representation / value learning), update (the policy update), "
                  "judging (the simulated human). Eval: seconds per evaluation (plain, and guided where the method "
                  "has it). Peak MiB: the largest peak resident set of the processes that worked on a cell, "
                  "over the method's cells."),
            ("table", ["task", "method", "rounds", *PARTS, "total", "eval", "peak MiB"], rows)]


def paste_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The short table for a paper: success at each budget, feedback to target and its ratio, seconds per round."""
    many = len(summary["tasks"]) > 1
    budgets = sorted(summary["spec"]["budgets"])
    head = (["task"] if many else []) + ["method", *[f"success @ {b}" for b in budgets], f"guided @ {budgets[-1]}",
                                         "feedback to target", "× best", "s / round"]
    rows = []
    for name, task in summary["tasks"].items():
        for m, d in task["methods"].items():
            guided = rate(d["guided"], len(budgets)) if d["guided"] is not None else "—"
            at = [rate(d["plain"], i + 1) + spent(d, i + 1, b) for i, b in enumerate(budgets)]
            rows.append(([name] if many else []) + [m, *at, guided,
                                                    needed(d["needed_plain"], budgets[-1]), ratio(d["ratio_plain"]),
                                                    f"{d['seconds']['total']:.1f}"])
    return head, rows


def _compute_blocks(compute: dict | None) -> list[tuple]:
    if not compute or not compute.get("results"):
        return []
    wanted = ("setting", "device", "dtype", "resolution", "steps", "rollout_images_per_s", "pipeline_images_per_s",
              "rollout_relative_speed", "compiled_rollout_images_per_s", "compile_seconds", "update_steps_per_s",
              "update_batched_steps_per_s", "update_half_steps_per_s", "update_batched_half_steps_per_s",
              "likelihood_steps_per_s", "pg_update_share", "pg_update_batched_share", "pg_update_half_share",
              "pg_update_batched_half_share", "likelihood_update_share", "rollout_tflops_per_s",
              "update_tflops_per_s", "peak_fraction", "update_peak_fraction")
    keys = [k for k in wanted if any(k in r for r in compute["results"])]
    rows = [[str(r.get(k, "—")) for k in keys] for r in compute["results"]]
    return [("h2", "Compute (hero bench compute)"), ("table", keys, rows)]


def _md(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "img":
            out.append(f"![{rest[1]}]({rest[0]})")
        else:
            head, rows = rest
            out.append("\n".join("| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head), *rows]))
    return "\n\n".join(out) + "\n"


def _html(blocks: list[tuple], folder: Path) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            out.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "img":
            data = base64.b64encode((folder / rest[0]).read_bytes()).decode()
            out.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(rest[1])}">')
        else:
            head, rows = rest
            cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            out.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}img{max-width:100%}"
             "table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>hero bench report</title><style>{style}</style>"
            f"</head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def latex_table(head: list[str], rows: list[list[str]]) -> str:
    def tex(s: str) -> str:
        for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                     (" ± ", " $\\pm$ "), ("×", "$\\times$"), ("> ", "$>$ "), ("@", "at"), ("—", "--")):
            s = s.replace(a, b)
        return s

    lines = ["\\begin{tabular}{l" + "r" * (len(head) - 1) + "}", "\\toprule", " & ".join(map(tex, head)) + " \\\\",
             "\\midrule", *[" & ".join(map(tex, r)) + " \\\\" for r in rows], "\\bottomrule", "\\end{tabular}"]
    return "% hero bench: success rate (mean ± sd over seeds) vs feedback; needs \\usepackage{booktabs}\n" + \
        "\n".join(lines) + "\n"


def write_report(root: str | Path, target: float | None = None, target_gain: float | None = None) -> Path:
    """Write the report files into the bench folder ``root``; returns the path of ``report.html``.

    ``target``/``target_gain``: read the cells against another bar than the bench's (``summarise``)."""
    root = Path(root)
    summary = summarise(root, target, target_gain)
    blocks = _settings(summary)
    if not summary["tasks"]:
        blocks.append(("p", "No finished cell yet: nothing to show."))
    for name, task in summary["tasks"].items():
        image = success_plot(name, task, root / f"success_{name}.png").name
        blocks += _task_blocks(name, task, image)
    if summary["tasks"]:
        seconds_plot(summary, root / "seconds.png")
        head, rows = paste_table(summary)
        blocks += _target_blocks(summary) + _seconds_blocks(summary)
        blocks += [("h2", "Table to paste"), ("p", "Success rate under plain noise (mean ± sd over seeds) at each "
                                                   "feedback budget; guided: HERO's feedback-guided noise; LaTeX "
                                                   "version in table.tex."), ("table", head, rows)]
        atomic_write_text(root / "table.tex", latex_table(head, rows))
    blocks += _compute_blocks(summary["compute"])
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(root / "report.md", _md(blocks))
    atomic_write_text(root / "report.html", _html(blocks, root))
    return root / "report.html"
