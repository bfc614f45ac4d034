"""The `hero` command line (typer): train, eval, sample, label, export, pretrain-toy, check-judge."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from hero.algorithms import ALGORITHMS
from hero.bench.cli import bench_app
from hero.quiet import quiet_libraries

# Before transformers is imported: hide its torchvision-fallback notices, which a user cannot act on.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="hero: fine-tune text-to-image diffusion models online from human feedback.")
app.add_typer(bench_app, name="bench")  # hero bench [--quick] ..., hero bench compute, hero bench report OUT


@app.command()
def sample(
    prompt: str = typer.Option(..., help='Prompt, e.g. "three blue circles".'),
    model: str = typer.Option("tiny-shapes", help="Built-in model name or a local diffusers pipeline folder."),
    n: int = typer.Option(64, min=1, help="Number of images."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same images."),
    out: Path = typer.Option(Path("runs/sample"), help="Output folder (images/, grid.png)."),
    steps: int = typer.Option(20, min=1, help="DDIM steps."),
    eta: float = typer.Option(1.0, min=0.0, help="DDIM eta (1.0: as stochastic as DDPM)."),
    guidance: float = typer.Option(None, help="Classifier-free guidance scale (default: the sampler's)."),
    precision: str = typer.Option("auto", help="auto (bf16 where native, else fp32), fp32, bf16 or fp16 (autocast)."),
    judge: bool = typer.Option(False, "--judge", help="Judge the images (toy-world prompts) and print rates as JSON."),
    pairs: bool = typer.Option(False, "--pairs", help="D3PO offline: images in noise-sharing pairs plus their "
                                                      "trajectories (annotate with `hero label OUT`; docs/d3po.md)."),
) -> None:
    """Sample images from a model; with --judge, print the judge's rates as the last line (JSON)."""
    from hero.models import load_pipeline
    from hero.sampling import DEFAULT_GUIDANCE, sample_images
    from hero.toyworld import Judge, image_grid, parse_task, rates
    from hero.toyworld.scenes import verdict_grid

    task = None
    if judge:
        try:
            task = parse_task(prompt)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--prompt") from None
    try:
        pipe = load_pipeline(model)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="--model") from None
    t0 = time.perf_counter()
    if pairs:
        images = _sample_pairs(pipe, prompt, n, out, model=model, seed=seed, steps=steps, eta=eta,
                               guidance=DEFAULT_GUIDANCE if guidance is None else guidance)
        seconds = time.perf_counter() - t0
    else:
        images = sample_images(pipe, prompt, n, seed=seed, steps=steps, eta=eta, precision=precision,
                               guidance_scale=DEFAULT_GUIDANCE if guidance is None else guidance)
        seconds = time.perf_counter() - t0
        (out / "images").mkdir(parents=True, exist_ok=True)
        from PIL import Image

        for i, im in enumerate(images):
            Image.fromarray(im).save(out / "images" / f"{i:04d}.png")
        image_grid(images).save(out / "grid.png")
        typer.echo(f"wrote {n} images and {out / 'grid.png'} in {seconds:.1f} s")
    if task is not None:
        verdicts = Judge().judge_batch(images, task)
        with (out / "verdicts.jsonl").open("w") as f:
            for i, v in enumerate(verdicts):
                f.write(json.dumps({"image": f"{i:04d}.png", **v.as_dict()}) + "\n")
        verdict_grid(images, [v.good for v in verdicts]).save(out / "verdicts.png")
        result = {"prompt": prompt, **{k: round(v, 4) for k, v in rates(verdicts).items()},
                  "seconds": round(seconds, 2)}
        typer.echo(json.dumps(result))


def _sample_pairs(pipe, prompt: str, n: int, out: Path, **settings):
    """`hero sample --pairs`: D3PO's offline samples (hero.algorithms.d3po_offline); errors are one line, exit 2."""
    from hero.algorithms.d3po_offline import sample_pairs

    t0 = time.perf_counter()
    try:
        images = sample_pairs(pipe, prompt, n, out, **settings)
    except (ValueError, FileExistsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {n} images in {n // 2} noise-sharing pairs to {out} in {time.perf_counter() - t0:.1f} s; "
               f"judge them with `hero label {out}` (or write {out / 'annotations.json'}), then "
               f"`hero train --algo d3po --from-annotations {out / 'annotations.json'} --out RUN`")
    return images


@app.command("pretrain-toy")
def pretrain_toy(
    out: Path = typer.Option(Path("runs/pretrain"), help="Output folder; resumes from out/last.pt if present."),
    steps: int = typer.Option(6000, min=1, help="Training steps (the shipped model: see docs/tiny-shapes.md)."),
    batch_size: int = typer.Option(64, min=1),
    lr: float = typer.Option(1e-3, min=0.0),
    seed: int = typer.Option(0),
    save_every: int = typer.Option(500, min=1),
    threads: int = typer.Option(2, min=1, help="CPU threads for torch."),
) -> None:
    """Pretrain the built-in tiny-shapes model on the toy world (reproducible: seeded, step-counted)."""
    from hero.pretrain import PretrainConfig, pretrain

    final = pretrain(PretrainConfig(out=str(out), steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                    save_every=save_every, threads=threads))
    typer.echo(f"model folder: {final}  (use it with --model {final})")


@app.command("check-judge")
def check_judge(n: int = typer.Option(2000, min=1, help="Generated images per task."),
                seed: int = typer.Option(0)) -> None:
    """Measure the judge's agreement with the truth on generated images, per task; print JSON per task."""
    from hero.toyworld.agreement import agreement_table

    for task, row in agreement_table(n, seed).items():
        typer.echo(json.dumps({"task": task, **{k: round(v, 4) for k, v in row.items()}}))


@app.command(epilog="Algorithms: " + " | ".join(f"{k}: {v}" for k, v in ALGORITHMS.items()))
def train(
    prompt: str = typer.Option(None, help='Prompt to fine-tune for, e.g. "three green triangles".'),
    prompts: Path = typer.Option(None, help="A prompt set instead: a file of one prompt per line, or JSON Lines "
                                            "({\"prompt\": ..., \"hidden_background\": ...}); each round samples "
                                            "across it (--set prompt_mix=even|random)."),
    model: str = typer.Option(None, help="tiny-shapes (built in), a local diffusers pipeline folder, or a single "
                                         "SD 1.x/2.x .safetensors/.ckpt (with --set model_config_dir=DIR)."),
    algo: str = typer.Option(None, help="hero (default), ... (see below)."),
    feedback: str = typer.Option(None, help="sim, sim:<error rate>, reward:jpeg, reward:jpeg-incompressibility, "
                                            "reward:aesthetic|pickscore|hpsv2 (a reward model from local paths: "
                                            "--set reward_model.path=DIR), "
                                            "web (a person, in the browser: prints the URL to open)."),
    budget: int = typer.Option(None, help="Feedback budget: images judged in all (default 512)."),
    images_per_round: int = typer.Option(None, help="Images per round (default 64)."),
    seed: int = typer.Option(None, help="Seed (default 0)."),
    out: Path = typer.Option(None, help="Run folder."),
    preset: str = typer.Option(None, help="A preset name (hero/presets/*.yaml) or a YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Dotted override, e.g. --set pg.timesteps_per_traj=3 (repeat)."),
    resume: Path = typer.Option(None, help="Continue the run in this folder after a crash or a stop; with "
                                           "--feedback / --budget: go on with another judge or a larger budget."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    from_annotations: Path = typer.Option(None, help="D3PO offline: train once on this annotation file of a "
                                                     "`hero sample --pairs` folder (docs/d3po.md), then stop."),
) -> None:
    """Fine-tune online from feedback: sample a round, get judgements, learn, repeat until the budget is spent."""
    from hero.config import ConfigError
    from hero.prompts import PromptFileError
    from hero.runs.errors import RunFolderError, one_line
    from hero.train import train as run_training

    if from_annotations is not None:
        return _train_offline(from_annotations, {"--feedback": feedback, "--budget": budget, "--resume": resume,
                                                 "--images-per-round": images_per_round}, preset, set_,
                              prompt=prompt, model=model, algo=algo, seed=seed, out=None if out is None else str(out))
    try:
        if resume is not None:
            fixed = {"--prompt": prompt, "--prompts": prompts, "--model": model, "--algo": algo,
                     "--images-per-round": images_per_round,
                     "--seed": seed, "--out": out, "--preset": preset}
            cfg = _resumed_config(resume, feedback, budget, set_, fixed)
        else:
            cfg = _new_config(preset, set_, prompts, prompt=prompt, model=model, algo=algo, feedback=feedback,
                              budget=budget, images_per_round=images_per_round, seed=seed,
                              out=None if out is None else str(out))
    except (ConfigError, RunFolderError, PromptFileError) as e:  # RunFolderError: a file of the run is unreadable
        typer.echo(f"error: {one_line(e, limit=600)}", err=True)
        raise typer.Exit(2) from None
    web, finished = None, False
    try:
        from hero.distributed import is_main_process
        from hero.models.loading import require_device

        require_device(cfg.device)  # before the run folder or the page: a missing GPU is a one-line error
        # Every process checks the folder (read-only) before any writes or serves: an error stops them all alike.
        plan = _check_resume(cfg) if resume is not None else None
        if cfg.feedback == "web" and is_main_process():  # under accelerate launch: one server, on rank 0
            web = _start_web(cfg, resume is not None)
        run = run_training(cfg, resume=resume is not None, source=web, show_progress=progress, plan=plan)
        finished = True
    except (FileExistsError, FileNotFoundError, ValueError, OSError) as e:  # RunFolderError is a ValueError
        typer.echo(f"error: {one_line(e, limit=600)}", err=True)
        raise typer.Exit(2) from None
    finally:
        if web is not None:
            web.close(done=finished)
    if is_main_process():
        typer.echo(f"run finished: {run.path}  (LoRA: {run.path / 'lora'}; evaluate with `hero eval {run.path}`)")


def _new_config(preset: str | None, set_: list[str], prompts: Path | None, **options):
    """A new run's config from the command line; a ``--prompts`` file is also parsed by the simulated human."""
    from hero.config import load_config

    cfg = load_config(preset, set_, prompts=None if prompts is None else _read_prompts(prompts, None), **options)
    if prompts is not None and cfg.feedback.startswith("sim"):
        _read_prompts(prompts, cfg)  # the simulated human must be able to judge every prompt
    return cfg


def _read_prompts(path: Path, sim_cfg) -> list[dict]:
    """``--prompts FILE`` as config values; with ``sim_cfg``, each prompt also parsed as the toy world's task."""
    from hero.prompts import read_prompt_file
    from hero.toyworld.tasks import parse_task

    def judgeable(spec) -> None:
        parse_task(spec.prompt, **sim_cfg.task_options(spec.prompt))

    specs = read_prompt_file(path, check=None if sim_cfg is None else judgeable)
    return [spec.model_dump(exclude_none=True) for spec in specs]


def _check_resume(cfg):
    """Check the run folder before it resumes (read-only) and say what its recoveries will do."""
    from hero.distributed import is_main_process
    from hero.train import check_run

    plan = check_run(cfg)
    for line in plan.report if is_main_process() else []:
        typer.echo(line, err=True)
    return plan


def _start_web(cfg, resume: bool):
    """Start the feedback page for the run and print its URL."""
    from hero.web import WebFeedback

    if not resume and (Path(cfg.out) / "config.yaml").is_file():
        raise FileExistsError(f"{cfg.out} already holds a run: pass --resume to continue it, or choose another --out")
    web = WebFeedback.for_config(cfg)
    typer.echo(f"feedback page: {web.start()}  (open it in a browser; Ctrl-C stops, --resume continues)")
    return web


def _resumed_config(run_dir: Path, feedback: str | None, budget: int | None, overrides: list[str], fixed: dict):
    """The run's saved config, located at ``run_dir`` (wherever the folder was copied or moved: its stored ``out``
    is ignored), with what may change when it continues: the feedback source, a larger budget and
    ``--set reward_model.*|web.*`` (pre-train with AI feedback, then go on with a person). ``hero.train`` saves it
    back to the run once the folder has passed its checks."""
    from hero.config import ConfigError, TrainConfig, load_config
    from hero.runs.checks import RESUME_HINT, RESUME_SET_PREFIXES
    from hero.runs.errors import RunFolderError
    from hero.runs.folder import RunFolder
    from hero.train import round_sizes

    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {run_dir}: no run there (no config.yaml)")
    given = [name for name, value in fixed.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} cannot change on --resume (the run fixes them); {RESUME_HINT}")
    bad = [o for o in overrides if not o.strip().startswith(RESUME_SET_PREFIXES)]
    if bad:
        raise ConfigError(f"--set {bad[0]!r} cannot change on --resume (only reward_model.* and web.* can)")
    try:
        old = TrainConfig.from_yaml(run_dir / "config.yaml")
    except ConfigError as e:
        raise RunFolderError(run_dir / "config.yaml", str(e)) from None
    here = {**old.model_dump(mode="json"), "out": str(run_dir)}
    if feedback is None and budget is None and not overrides:
        return TrainConfig.model_validate(here)
    new = load_config(None, overrides, **{**here, "feedback": feedback or old.feedback, "budget": budget or old.budget})
    done = RunFolder(run_dir).latest_round() + 1  # an unreadable marker: a RunFolderError naming it
    if round_sizes(new)[:done] != round_sizes(old)[:done]:  # the rounds already judged must stay what they were
        raise ConfigError(f"bad value for 'budget': {new.budget} (the run has judged {sum(round_sizes(old)[:done])} "
                          f"images in {done} rounds; a new budget must keep those rounds whole)")
    return new


def _train_offline(path: Path, online: dict, preset: str | None, overrides: list[str], **values) -> None:
    """`hero train --from-annotations FILE`: every problem is one line on stderr and exit status 2."""
    from hero.algorithms.d3po_offline import train_from_annotations

    try:
        given = [name for name, value in online.items() if value is not None]  # options of the online loop only
        if given:
            raise ValueError(f"{', '.join(given)} cannot be used with --from-annotations (the file says what was "
                             "judged; the samples fix prompt, model and sampler)")
        run = train_from_annotations(path, preset, overrides, **values)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as e:  # ConfigError is a ValueError
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    m = run.metrics()[-1]
    typer.echo(f"trained D3PO on {m['pairs']} preference(s) ({m['feedback']} feedback) from {path}: "
               f"{run.path}  (LoRA: {run.path / 'lora'}; evaluate with `hero eval {run.path}`)")


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A run folder written by hero train."),
    n: int = typer.Option(256, min=1, help="Images per condition."),
    json_: bool = typer.Option(False, "--json", help="Print only the JSON line."),
    seed: int = typer.Option(987_654, help="Evaluation seed (distinct from training seeds)."),
    round_: int = typer.Option(None, "--round", min=0, help="Evaluate the checkpoint after this round (numbered "
                                                            "from 0, as in metrics.jsonl) instead of the last one."),
    prompts: Path = typer.Option(None, help="Evaluate each prompt of this file (as for hero train --prompts), e.g. "
                                            "prompts the run never trained on: success per prompt and the mean."),
    compile_: bool = typer.Option(None, "--compile/--no-compile", help="Sample through torch.compile: faster "
                                  "after a one-off compile (docs/speed.md). Default: the run's sampler.compile."),
) -> None:
    """Success rates of the base model and the run's LoRA, under plain and guided noise (last line: JSON)."""
    from hero.evaluate import evaluate
    from hero.prompts import PromptFileError, read_prompt_file
    from hero.runs.errors import RunFolderError
    from hero.toyworld.tasks import parse_task

    try:
        specs = None if prompts is None else read_prompt_file(
            prompts, check=lambda spec: parse_task(spec.prompt, **spec.task_options()))
        result = evaluate(run_dir, n=n, seed=seed, round_index=round_, prompts=specs, compile=compile_)
    except (FileNotFoundError, RunFolderError, PromptFileError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if "prompts" in result:
        if not json_:
            _print_prompt_rates(result)
    elif not json_:
        for k in ("base_plain", "plain", "base_guided", "guided"):
            if k in result:
                nan = float("nan")
                div, mem = result["diversity"].get(k, {}), result["memorisation"].get(k, {})
                typer.echo(f"{k:>12}: {result[k]:.3f} ± {result['stderr'].get(k, nan):.3f}   diversity "
                           f"{div.get('pairwise', nan):.3f} (duplicates {div.get('duplicate_rate', nan):.2f})   "
                           f"nearest judged-good {mem.get('nn_distance', nan):.3f} "
                           f"(copies {mem.get('copy_rate', nan):.2f})")
                fails = ", ".join(f"{c} {share:.2f}" for c, share in result["failures"].get(k, {}).items())
                typer.echo(f"{'':>14}rejected for: {fails or 'nothing'}")
    typer.echo(json.dumps(result))


def _print_prompt_rates(result: dict) -> None:
    """One line per prompt of an `hero eval --prompts` result, then the mean."""
    rows = [(p, r, "trained" if r["trained"] else "held out") for p, r in result["prompts"].items()]
    for prompt, row, kind in [*rows, ("mean", result["mean"], f"{len(rows)} prompts")]:
        rates = "   ".join(f"{k} {row[k]:.3f} ± {row['stderr'][k]:.3f}" for k in ("base_plain", "plain", "guided")
                           if k in row)
        typer.echo(f"{prompt!r:>32} ({kind}): {rates}")


@app.command()
def label(
    run_dir: Path = typer.Argument(..., help="A run folder whose rounds were sampled earlier, or a folder of "
                                             "`hero sample --pairs` (judged in pairs, written as annotations.json)."),
    host: str = typer.Option(None, help="Interface to listen on (default: the run's web.host, 127.0.0.1)."),
    port: int = typer.Option(None, min=0, max=65535, help="Port (default: the run's web.port, 8765; 0: any)."),
    allow_host: list[str] = typer.Option([], help="Extra Host-header name to answer to (repeat)."),
    prompt: str = typer.Option(None, help="The prompt, for a folder without config.yaml."),
) -> None:
    """Label, in the browser, the rounds of RUN_DIR that have images but no feedback yet (offline annotation)."""
    from hero.web import label_run

    try:
        n = label_run(run_dir, host=host, port=port, allowed_hosts=allow_host, prompt=prompt,
                      on_ready=lambda url: typer.echo(f"feedback page: {url}  (open it in a browser)"))
    except (FileNotFoundError, ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"labelled {n} round(s) in {run_dir}" if n else f"nothing to label in {run_dir}: every sampled "
               "round has feedback")
    if n and (run_dir / "sample.json").is_file() and (run_dir / "annotations.json").is_file():
        typer.echo(f"annotations: {run_dir / 'annotations.json'}  (train with `hero train --algo d3po "
                   f"--from-annotations {run_dir / 'annotations.json'} --out RUN`)")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run folder with a feedback log."),
    out: Path = typer.Option(None, help="Output folder (default: RUN_DIR/export)."),
) -> None:
    """Write the run's feedback as JSONL (one line per judged image) and as preference pairs (pairs.jsonl)."""
    from hero.web import export_run

    try:
        result = export_run(run_dir, out)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {result['feedback']} judgements to {result['out']}/feedback.jsonl and "
               f"{result['pairs']} pairs to {result['out']}/pairs.jsonl")


def main() -> None:
    quiet_libraries()
    app()


if __name__ == "__main__":
    main()
