"""`hero bench` (the grid and its report), `hero bench report OUT`, `hero bench compute`; each ends with a JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

bench_app = typer.Typer(add_completion=False, help="Benchmarks: feedback efficiency (the grid) and compute speed.")


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=what) from None


def _words(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="A few minutes: hero + ddpo, 1 seed, budgets 16,32,48."),
    methods: str = typer.Option(None, help="Comma-separated, e.g. hero,ddpo (default: hero,d3po,ddpo,dpok,seiko as "
                                           "available)."),
    tasks: str = typer.Option(None, help="Comma-separated task names: counting, binding, anomaly, personalization, "
                                         "safety (default: counting)."),
    seeds: str = typer.Option(None, help="Comma-separated seeds (default 0,1; 0,1,2 for a 3-seed spread)."),
    budgets: str = typer.Option(None, help="Comma-separated feedback budgets, multiples of --images-per-round "
                                           "(default 64,128,256)."),
    images_per_round: int = typer.Option(None, min=1, help="Images per round (default 32)."),
    eval_n: int = typer.Option(None, min=1, help="Images per evaluation (default 64)."),
    preset: str = typer.Option(None, help="Training preset (default demo)."),
    set_: list[str] = typer.Option([], "--set", help="Dotted training override for every cell (repeat)."),
    device: str = typer.Option(None, help="cpu (default) or cuda."),
    target: float = typer.Option(None, help="Success rate to reach (default: the base model's + 0.2)."),
    jobs: int = typer.Option(None, min=1, help="Cells at once (default: one per core, as memory allows; 1 on GPU)."),
    out: Path = typer.Option(None, help="Bench folder (default runs/bench, or runs/bench-quick with --quick)."),
) -> None:
    """Run methods × tasks × seeds × budgets against the simulated human; write the report into OUT."""
    if ctx.invoked_subcommand is not None:
        return
    from hero.bench.grid import default_spec, split_methods
    from hero.bench.runner import run_bench

    spec = default_spec(quick)
    wanted = _words(methods)
    if wanted is None:
        spec.methods, missing = split_methods(spec.methods)
        if missing:
            typer.echo(f"skipping {', '.join(missing)}: not available in this install")
    else:
        spec.methods = wanted
    given = {"tasks": _words(tasks), "seeds": _ints(seeds, "--seeds"), "budgets": _ints(budgets, "--budgets"),
             "images_per_round": images_per_round, "eval_n": eval_n, "preset": preset, "device": device,
             "target": target}
    for key, value in given.items():
        if value is not None:
            setattr(spec, key, value)
    spec.overrides = [*spec.overrides, *set_]
    out = out or Path("runs/bench-quick" if quick else "runs/bench")
    try:
        summary = run_bench(spec, out, jobs=jobs, echo=typer.echo)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report: {summary['report']}  (and {Path(summary['out']) / 'report.md'})")
    typer.echo(json.dumps(summary))
    if summary["failed"]:
        raise typer.Exit(1)


@bench_app.command()
def report(
    out: Path = typer.Argument(..., help="A bench folder written by hero bench."),
    target: float = typer.Option(None, min=0.0, max=1.0, help="Success rate to reach (default: the bench's)."),
    target_gain: float = typer.Option(None, min=0.0, max=1.0, help="Or: the base model's success + this."),
) -> None:
    """Rewrite the report of a bench folder from its cells' logs (optionally against another target)."""
    from hero.bench.report import write_report

    if not (out / "bench.json").is_file():
        typer.echo(f"error: {out} is not a bench folder (no bench.json)", err=True)
        raise typer.Exit(2)
    if target is not None and target_gain is not None:
        typer.echo("error: give --target or --target-gain, not both", err=True)
        raise typer.Exit(2)
    path = write_report(out, target, target_gain)
    typer.echo(json.dumps({"report": str(path), "markdown": str(out / "report.md")}))


@bench_app.command()
def compute(
    n: int = typer.Option(8, min=1, help="Images per timing on the tiny model."),
    steps: int = typer.Option(20, min=1, help="Denoising steps."),
    repeats: int = typer.Option(2, min=1, help="Timed repeats (the median is reported), after one warm-up."),
    sd15: bool = typer.Option(None, "--sd15/--no-sd15", help="Also time SD 1.5 architecture at 512 px (random "
                                                               "weights); default: when a GPU is present."),
    sd15_n: int = typer.Option(8, min=1, help="Images per timing at SD 1.5."),
    sdxl: bool = typer.Option(False, "--sdxl", help="Also time the SDXL base architecture at 1024 px (random "
                                                    "weights; a GPU with ~40 GB)."),
    sdxl_n: int = typer.Option(4, min=1, help="Images per timing at SDXL and SD 3.5."),
    sd35: bool = typer.Option(False, "--sd35", help="Also time the SD 3.5 Medium architecture at 1024 px (random "
                                                    "weights, no T5; a GPU)."),
    flux: bool = typer.Option(False, "--flux", help="Also time the FLUX.1-dev architecture at 1024 px (random "
                                                    "weights; a GPU with ~60 GB)."),
    device: str = typer.Option(None, help="Device for SD 1.5 (default cuda when present, else cpu)."),
    threads: int = typer.Option(None, min=1, help="CPU threads for torch (default: torch's; on a busy machine 1 "
                                                  "is often faster)."),
    out: Path = typer.Option(None, help="Also write compute.json here (in a bench folder the report shows it)."),
    compiled: bool = typer.Option(False, "--compile", help="Also time the rollout through torch.compile "
                                                           "(sampler.compile), with its one-off compile."),
    precision: str = typer.Option("fp32", help="Comma-separated precisions for the tiny model's rows, side by "
                                               "side (e.g. fp32,bf16; auto: what a run would pick here)."),
) -> None:
    """Images/s of rollout with log-probs vs the plain diffusers pipeline, update steps/s, FLOP rate."""
    import torch

    from hero.bench.compute import run_compute
    from hero.models.loading import resolve_precision

    if threads is not None:
        torch.set_num_threads(threads)
    precisions = tuple(resolve_precision(p.strip(), "cpu") for p in precision.split(","))
    for p in precisions:
        if p not in ("fp32", "bf16", "fp16"):
            raise typer.BadParameter(f"{p!r}: expected fp32, bf16, fp16 or auto", param_hint="--precision")
    result = run_compute(n=n, steps=steps, repeats=repeats, sd15=sd15, sd15_n=sd15_n, device=device,
                         echo=typer.echo, sdxl=sdxl, sdxl_n=sdxl_n, sd35=sd35, flux=flux, compiled=compiled,
                         precisions=precisions)
    if out is not None:
        from hero.runs.atomic import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "compute.json", json.dumps(result, indent=1) + "\n")
        if (out / "bench.json").is_file():  # a bench folder: its report gains the compute table
            from hero.bench.report import write_report

            result["report"] = str(write_report(out))
    typer.echo(json.dumps(result))
