"""`hero bench`: a real (tiny) grid against the simulated human, its report, resumability, and the compute benchmark.

The grid runs once per module (two methods, one seed, budgets 8 and 16, 4 sampler steps, 8 evaluation images);
the report's numbers are checked against the cells' own logs, and against a tampered copy of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hero.bench.grid import BenchSpec, Cell, cell_config, default_spec, split_methods, validate
from hero.cli import app

runner = CliRunner()
METHODS = ["hero", "ddpo"]
GRID = ["bench", "--methods", ",".join(METHODS), "--seeds", "0", "--budgets", "8,16", "--images-per-round", "8",
        "--eval-n", "8", "--set", "sampler.steps=4", "--set", "pg.timesteps_per_traj=2",
        "--set", "hero.encoder_epochs=20"]


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def md_table(md: str, heading: str) -> list[dict]:
    """The first Markdown table after ``heading``, as one dict per row."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return [dict(zip(table[0], r, strict=True)) for r in table[2:]]


def expected_rows(root: Path) -> dict[str, dict]:
    """What the paste table must say, computed here straight from evals.jsonl and metrics.jsonl."""
    out = {}
    for method in METHODS:
        cell = root / "cells" / "counting" / method / "seed0"
        evals = {e["budget"]: e for e in map(json.loads, (cell / "evals.jsonl").read_text().splitlines())}
        metrics = [json.loads(line) for line in (cell / "run" / "metrics.jsonl").read_text().splitlines()]
        parts = ("seconds_sampling", "seconds_representation", "seconds_update", "seconds_feedback")
        total = sum(float(np.mean([m[p] for m in metrics])) for p in parts)
        out[method] = {"success @ 8": f"{evals[8]['plain']:.3f}", "success @ 16": f"{evals[16]['plain']:.3f}",
                       "guided @ 16": f"{evals[16]['guided']:.3f}" if "guided" in evals[16] else "—",
                       "s / round": f"{total:.1f}"}
    return out


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench") / "b"
    res = runner.invoke(app, [*GRID, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_grid_writes_cells_from_real_runs(bench_dir):
    out, output = bench_dir
    summary = last_json(output)
    assert summary["ran"] == 2 and summary["skipped"] == 0 and summary["failed"] == []
    for method in METHODS:
        cell = out / "cells" / "counting" / method / "seed0"
        info = json.loads((cell / "cell.json").read_text())
        assert info["status"] == "done" and info["peak_rss_mb"] > 50 and info["seconds_train"] > 0
        metrics = [json.loads(line) for line in (cell / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [m["feedback"] for m in metrics] == [8, 16]
        assert all(m["seconds_sampling"] > 0 and m["seconds_update"] > 0 for m in metrics)
        evals = [json.loads(line) for line in (cell / "evals.jsonl").read_text().splitlines()]
        assert [e["budget"] for e in evals] == [0, 8, 16] and all(e["n"] == 8 for e in evals)
        assert ("guided" in evals[-1]) == (method == "hero")  # only HERO has feedback-guided noise
        kept = sorted(p.name for p in (cell / "run" / "checkpoints").glob("round_*"))
        assert kept == ["round_000", "round_001"]  # the budgets' checkpoints


def test_report_opens_with_plots_and_numbers_from_the_logs(bench_dir, tmp_path):
    out, _ = bench_dir
    for name in ("report.md", "report.html", "table.tex", "summary.json", "success_counting.png", "seconds.png"):
        assert (out / name).is_file(), name
    for png in ("success_counting.png", "seconds.png"):
        with Image.open(out / png) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 400
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "![success vs feedback, counting](success_counting.png)" in md
    assert page.count("data:image/png;base64,") == 2 and page.index("<img") < page.index("<table")
    rows = {r["method"]: r for r in md_table(md, "## Table to paste")}
    assert set(rows) == set(METHODS)
    for method, want in expected_rows(out).items():
        for key, value in want.items():
            assert rows[method][key] == value, (method, key)
    judged = {r["method"]: r for r in md_table(md, "### Judged good during training")}
    for method in METHODS:
        metrics = (out / "cells" / "counting" / method / "seed0" / "run" / "metrics.jsonl").read_text().splitlines()
        for m in map(json.loads, metrics):
            assert judged[method][str(m["feedback"] - m["images"])] == f"{m['good_rate']:.3f}"
    # Tamper with a copy of one cell's log: the rewritten report must follow it (nothing is a constant).
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    evals = copy / "cells" / "counting" / "ddpo" / "seed0" / "evals.jsonl"
    lines = [json.loads(line) for line in evals.read_text().splitlines()]
    lines[-1]["plain"] = 0.875
    evals.write_text("".join(json.dumps(e) + "\n" for e in lines))
    res = runner.invoke(app, ["bench", "report", str(copy)])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in md_table((copy / "report.md").read_text(), "## Table to paste")}
    assert rows["ddpo"]["success @ 16"] == "0.875"
    target = json.loads((copy / "summary.json").read_text())["tasks"]["counting"]["target"]
    first = next((str(e["budget"]) for e in lines if e["plain"] >= target), "> 16")
    assert rows["ddpo"]["feedback to target"] == first


def test_report_puts_diversity_and_memorisation_beside_the_last_success(bench_dir):
    out, _ = bench_dir
    rows = md_table((out / "report.md").read_text(), "### Diversity and memorisation at 16 feedback")
    cells = {m: {e["budget"]: e for e in map(json.loads, (out / "cells" / "counting" / m / "seed0" / "evals.jsonl")
                                              .read_text().splitlines())} for m in METHODS}
    base = cells["hero"][0]["diversity"]["plain"]
    assert rows[0]["model"] == "base model" and rows[0]["pairwise"] == f"{base['pairwise']:.3f}"
    got = {(r["model"], r["noise"]): r for r in rows[1:]}
    assert set(got) == {("hero", "plain"), ("hero", "guided"), ("ddpo", "plain")}  # guided: HERO's noise only
    for (method, cond), row in got.items():
        last = cells[method][16]
        assert row["success"] == f"{last[cond]:.3f} ± {last['stderr'][cond]:.3f}"
        assert row["pairwise"] == f"{last['diversity'][cond]['pairwise']:.3f}"
        assert row["nearest judged-good"] == f"{last['memorisation'][cond]['nn_distance']:.3f}"
        assert row["copies"] == f"{last['memorisation'][cond]['copy_rate']:.2f}"


def test_report_reads_the_same_cells_against_another_target(bench_dir, tmp_path):
    out, _ = bench_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    evals = copy / "cells" / "counting" / "ddpo" / "seed0" / "evals.jsonl"
    lines = [json.loads(line) for line in evals.read_text().splitlines()]
    for line, rate in zip(lines, (0.0, 0.6, 1.0), strict=True):  # at 0, 8 and 16 feedback
        line["plain"] = rate
    evals.write_text("".join(json.dumps(e) + "\n" for e in lines))
    for args, reached in ((["--target", "0.5"], "8"), (["--target", "0.9"], "16")):
        res = runner.invoke(app, ["bench", "report", str(copy), *args])
        assert res.exit_code == 0, res.output
        summary = json.loads((copy / "summary.json").read_text())["tasks"]["counting"]
        assert summary["target"] == float(args[1])
        rows = {r["method"]: r for r in md_table((copy / "report.md").read_text(), "## Table to paste")}
        assert rows["ddpo"]["feedback to target"] == reached
        # × best: over the least feedback any method needed, so the method that got there first reads 1.00×
        spent = {m: int(r["feedback to target"]) for m, r in rows.items() if r["feedback to target"].isdigit()}
        for method, row in rows.items():
            want = f"{spent[method] / min(spent.values()):.2f}×" if method in spent else "—"
            assert row["× best"] == want, (method, row)
        if reached == "8":  # no method can need less than the first budget
            assert rows["ddpo"]["× best"] == "1.00×"
    res = runner.invoke(app, ["bench", "report", str(copy), "--target-gain", "0.05"])
    summary = json.loads((copy / "summary.json").read_text())["tasks"]["counting"]
    assert res.exit_code == 0 and summary["target"] == pytest.approx(summary["base"] + 0.05)
    assert json.loads((copy / "bench.json").read_text())["target"] is None  # the bench's own bar is unchanged
    res = runner.invoke(app, ["bench", "report", str(copy), "--target", "0.5", "--target-gain", "0.1"])
    assert res.exit_code == 2 and "not both" in res.output


def test_rerun_skips_finished_cells_and_refuses_other_settings(bench_dir):
    out, _ = bench_dir
    done = out / "cells" / "counting" / "hero" / "seed0" / "cell.json"
    before = done.stat().st_mtime_ns
    res = runner.invoke(app, [*GRID, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "skip counting/hero/seed0 (finished)" in res.output
    summary = last_json(res.output)
    assert summary["ran"] == 0 and summary["skipped"] == 2
    assert done.stat().st_mtime_ns == before
    res = runner.invoke(app, [*GRID, "--eval-n", "16", "--out", str(out)])
    assert res.exit_code == 2 and "other settings" in res.output


def test_evaluate_a_given_round(bench_dir):
    from hero.evaluate import evaluate

    out, _ = bench_dir
    cell = out / "cells" / "counting" / "ddpo" / "seed0"
    evals = {e["budget"]: e for e in map(json.loads, (cell / "evals.jsonl").read_text().splitlines())}
    res = evaluate(cell / "run", n=8, round_index=0, include_base=False)
    assert res["rounds"] == 1 and res["plain"] == evals[8]["plain"]
    with pytest.raises(FileNotFoundError, match="no checkpoint of round 5"):
        evaluate(cell / "run", n=8, round_index=5)


def test_a_cell_takes_the_base_model_result_from_a_sibling(bench_dir, tmp_path):
    from hero.bench.cell import read_records, run_cell

    out, _ = bench_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cells = copy / "cells" / "counting"
    hero_evals, ddpo = cells / "hero" / "seed0" / "evals.jsonl", cells / "ddpo" / "seed0"
    hero_base = read_records(hero_evals)[0]
    assert hero_base["budget"] == 0 and "shared_from" not in hero_base
    # The ddpo cell evaluated again with hero's base result on disk: taken over, not sampled again.
    for name in ("evals.jsonl", "cell.json"):
        (ddpo / name).unlink()
    peaks = read_records(ddpo / "peak_rss.jsonl")  # the grid's process: after training, and at the end
    assert len(peaks) == 2 and peaks[-1]["peak_rss_mb"] == json.loads((out / "cells/counting/ddpo/seed0/cell.json")
                                                                      .read_text())["peak_rss_mb"]
    with (ddpo / "peak_rss.jsonl").open("a") as f:  # an earlier process (an earlier session) that peaked higher
        f.write(json.dumps({"pid": 1, "peak_rss_mb": 1e6}) + "\n")
    run_cell(ddpo)
    assert json.loads((ddpo / "cell.json").read_text())["peak_rss_mb"] == 1e6  # the cell's peak over processes
    evals = read_records(ddpo / "evals.jsonl")
    assert [e["budget"] for e in evals] == [0, 8, 16]
    assert evals[0]["shared_from"] == "hero/seed0" and evals[0]["plain"] == hero_base["plain"]
    assert evals[1]["with_base"] is False
    # A sibling evaluated with other settings (here: another n) is not a source: the base model is sampled.
    hero_base["base_key"]["n"] = 9999
    hero_evals.write_text("".join(json.dumps(e) + "\n" for e in [hero_base, *read_records(hero_evals)[1:]]))
    for name in ("evals.jsonl", "cell.json"):
        (ddpo / name).unlink()
    run_cell(ddpo)
    evals = read_records(ddpo / "evals.jsonl")
    assert "shared_from" not in evals[0] and evals[1]["with_base"] is True


def test_grid_settings_are_checked_before_anything_runs(tmp_path):
    validate(BenchSpec(methods=["hero", "d3po"], budgets=[16, 32], images_per_round=16), tmp_path)
    bad = [(dict(methods=["nope"]), "unknown method nope"), (dict(methods=["hero"], tasks=["nope"]), "unknown task"),
           (dict(methods=["hero"], budgets=[50]), "multiples of images_per_round"),
           (dict(methods=["d3po"], budgets=[14], images_per_round=7), "must be even for d3po"),
           (dict(methods=["hero"], overrides=["pg.nope=1"]), "unknown config key 'pg.nope'"),
           (dict(methods=["d3po"], tasks=["counting", "transfer"]), "--algo d3po learns from one prompt")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            validate(BenchSpec(**kwargs), tmp_path)
    assert split_methods(["hero", "no-such-method"]) == (["hero"], ["no-such-method"])
    for quick in (True, False):  # the shipped grids are valid with whichever methods exist
        spec = default_spec(quick)
        spec.methods = split_methods(spec.methods)[0]
        validate(spec, tmp_path)
    cfg = cell_config(BenchSpec(methods=["ddpo"], tasks=["personalization"]), Cell("personalization", "ddpo", 2),
                      tmp_path / "run")
    assert (cfg.algo, cfg.seed, cfg.budget, cfg.task.hidden_background) == ("ddpo", 2, 256, "black")


def test_a_transfer_cell_reports_trained_and_held_out_prompts_beside_the_base(tmp_path):
    from hero.toyworld.tasks import TRANSFER_TASKS

    out = tmp_path / "b"
    res = runner.invoke(app, ["bench", "--methods", "raft", "--tasks", "transfer", "--seeds", "0,1", "--budgets", "9",
                              "--images-per-round", "9", "--eval-n", "4", "--set", "sampler.steps=4",
                              "--set", "pg.timesteps_per_traj=2", "--set", "likelihood.steps_per_round=3",
                              "--jobs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cell = out / "cells" / "transfer" / "raft" / "seed0"
    cfg = json.loads((cell / "cell_spec.json").read_text())["config"]
    task = TRANSFER_TASKS["transfer"]
    assert [p["prompt"] for p in cfg["prompts"]] == task["train"] and cfg["prompt"] is None
    base, after = [json.loads(x) for x in (cell / "evals.jsonl").read_text().splitlines()]
    for e in (base, after):
        assert set(e["per_prompt"]) == set(task["train"] + task["held_out"])
        assert e["plain"] == pytest.approx(np.mean([e["per_prompt"][p] for p in task["train"]]))
        assert e["held_out_plain"] == pytest.approx(np.mean([e["per_prompt"][p] for p in task["held_out"]]))
    # The second seed's cell takes the base model's per-prompt record from the first, rather than sampling it again.
    shared, _ = [json.loads(x) for x in (cell.parent / "seed1" / "evals.jsonl").read_text().splitlines()]
    assert shared.pop("shared_from") == "raft/seed0" and shared == base
    md = (out / "report.md").read_text()
    rows = md_table(md, "Transfer: success on the held-out prompts")
    assert rows[0]["method"] == "raft" and rows[0]["0"].startswith(f"{base['held_out_plain']:.3f}")


def test_compute_benchmark_on_cpu(tiny_sd_pipeline, monkeypatch):
    from hero.bench.compute import (
        build_flux_pipeline,
        build_sd3_pipeline,
        build_sd_pipeline,
        build_sdxl_pipeline,
        measure,
        peak_tflops,
        run_compute,
    )

    result = run_compute(n=2, steps=2, repeats=1, sd15=False, echo=lambda s: None, precisions=("fp32", "bf16"))
    row, bf16 = result["results"]  # the tiny model at each precision, side by side
    assert (row["precision"], row["dtype"], bf16["precision"], bf16["dtype"]) == ("fp32", "float32", "bf16",
                                                                                  "bfloat16")
    assert set(bf16["speedup_vs_fp32"]) == {"rollout_images_per_s", "pipeline_images_per_s", "update_steps_per_s",
                                            "likelihood_steps_per_s"} and "speedup_vs_fp32" not in row
    assert bf16["speedup_vs_fp32"]["rollout_images_per_s"] == pytest.approx(
        bf16["rollout_images_per_s"] / row["rollout_images_per_s"], rel=1e-2)
    for key in ("rollout_images_per_s", "pipeline_images_per_s", "update_steps_per_s", "unet_gflop_per_image_step",
                "rollout_tflops_per_s", "update_tflops_per_s", "likelihood_steps_per_s", "likelihood_tflops_per_s",
                "round_sampling_s", "round_pg_update_s", "round_likelihood_update_s"):
        assert row[key] > 0, key
    assert 0 < row["pg_update_share"] < 1 and 0 < row["likelihood_update_share"] < 1
    for name in ("batched", "half", "batched_half"):  # the update's variants, side by side
        assert row[f"update_{name}_steps_per_s"] > 0 and 0 < row[f"pg_update_{name}_share"] < 1
    assert row["round_sampling_s"] == pytest.approx(64 / row["rollout_images_per_s"], rel=1e-3)
    assert "peak_fraction" not in row and "compiled_rollout_images_per_s" not in row  # CPU: no peak table
    # --compile times the rollout through torch.compile (traced only here: inductor's compile takes a minute).
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real_compile(module, backend="eager"))
    # The SD path (a VAE, a CLIP text encoder), on a tiny pipeline and on the builder with tiny configs.
    sd = measure(tiny_sd_pipeline, "tiny-sd", n=2, steps=2, guidance=5.0, batch=2, update_batch=2, repeats=1,
                 compiled=True, likelihood_steps=1)
    assert sd["resolution"] == 16 and sd["rollout_images_per_s"] > 0 and sd["update_steps_per_s"] > 0
    assert sd["compiled_rollout_images_per_s"] > 0 and sd["compiled_speedup"] > 0 and sd["compile_seconds"] >= 0
    pipe = build_sd_pipeline(
        unet=dict(sample_size=4, layers_per_block=1, block_out_channels=(8, 16), cross_attention_dim=16,
                  attention_head_dim=4, norm_num_groups=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
        vae=dict(latent_channels=4, layers_per_block=1, sample_size=8, norm_num_groups=4, block_out_channels=(8, 16),
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
        text=dict(vocab_size=80, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=32))
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.cross_attention_dim == 16
    # SDXL's builder with tiny configs, timed as the --sdxl row is: two encoders, pooled + size conditioning.
    text = dict(vocab_size=80, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=32)
    xl = build_sdxl_pipeline(
        unet=dict(sample_size=4, layers_per_block=1, block_out_channels=(8, 16), cross_attention_dim=32,
                  attention_head_dim=4, norm_num_groups=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
                  addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 8),
        vae=dict(latent_channels=4, layers_per_block=1, sample_size=8, norm_num_groups=4, block_out_channels=(8, 16),
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
        text=text, text_2={**text, "projection_dim": 8})
    row = measure(xl, "tiny-sdxl", n=2, steps=2, guidance=5.0, batch=2, update_batch=1, repeats=1)
    assert row["resolution"] == 8 and row["rollout_images_per_s"] > 0 and row["update_steps_per_s"] > 0
    sd3 = build_sd3_pipeline(
        transformer=dict(sample_size=4, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                         attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                         joint_attention_dim=32, pooled_projection_dim=32),
        vae=dict(latent_channels=4, layers_per_block=1, sample_size=8, norm_num_groups=4, block_out_channels=(8, 16),
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 shift_factor=0.0609, scaling_factor=1.5305),
        text=text, text_2={**text, "projection_dim": 16})
    row = measure(sd3, "tiny-sd3", n=2, steps=2, guidance=4.5, batch=2, update_batch=1, repeats=1)
    assert row["resolution"] == 8 and row["rollout_images_per_s"] > 0 and row["update_steps_per_s"] > 0
    flux = build_flux_pipeline(
        transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                         guidance_embeds=True, axes_dims_rope=(4, 4, 8)),
        vae=dict(latent_channels=4, layers_per_block=1, sample_size=8, norm_num_groups=4, block_out_channels=(8, 16),
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 shift_factor=0.1159, scaling_factor=0.3611),
        text=text, t5=dict(vocab_size=80, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4))
    flux.default_sample_size = 4  # 8 px: the builder's 1024 px default would not be tiny
    row = measure(flux, "tiny-flux", n=2, steps=2, guidance=3.5, batch=2, update_batch=1, repeats=1)
    assert row["resolution"] == 8 and row["rollout_images_per_s"] > 0 and row["update_steps_per_s"] > 0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.4 and peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    assert peak_tflops("Tesla T4") is None


def test_a_round_is_priced_with_the_demo_presets_own_update():
    from hero.bench.compute import demo_policy_update, round_seconds
    from hero.config import load_config

    pg = load_config("demo").pg
    assert demo_policy_update() == (pg.inner_epochs * 64 // pg.batch_size, pg.timesteps_per_traj)
    row = {"rollout_images_per_s": 6.4, "update_steps_per_s": 2.0, "update_timesteps": 5,
           "likelihood_steps_per_s": 3.0}
    priced = round_seconds(row)
    steps, k = demo_policy_update()
    assert priced["round_sampling_s"] == pytest.approx(10.0)
    assert priced["round_pg_update_s"] == pytest.approx(steps / 2.0 * k / 5)  # timed at 5 timesteps, priced at k
    assert priced["round_likelihood_update_s"] == pytest.approx(100.0)
    pg_seconds = priced["round_pg_update_s"]
    assert priced["pg_update_share"] == pytest.approx(pg_seconds / (10.0 + pg_seconds))
    assert "round_pg_update_half_s" not in priced  # a row without the conditional-half rate
    half = round_seconds({**row, "update_half_steps_per_s": 4.0})
    assert "round_pg_update_batched_s" not in half
    assert half["round_pg_update_half_s"] == pytest.approx(steps / 4.0 * k / 5)
    assert half["pg_update_half_share"] == pytest.approx(half["round_pg_update_half_s"]
                                                         / (10.0 + half["round_pg_update_half_s"]))


def _gone(pid: int) -> bool:
    """The process has exited (a zombie no one reaps counts: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_cell_process_ends_when_its_bench_is_killed():
    parent = textwrap.dedent("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; from hero.bench.cell import exit_with_parent; "
                                  "exit_with_parent(poll_s=0.05); print('ready', flush=True); time.sleep(120)"],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    bench = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    cell = int(bench.stdout.readline())
    assert not _gone(cell)
    bench.kill()  # SIGKILL: the bench has no chance to stop its children
    bench.wait()
    deadline = time.monotonic() + 20
    while not _gone(cell) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(cell)
