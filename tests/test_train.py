"""The online loop end to end: HERO on the shipped model and on a tiny SD pipeline with a VAE, resume, eval."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hero.cli import app
from hero.config import load_config
from hero.evaluate import evaluate
from hero.models import load_pipeline
from hero.runs.feedback_log import FeedbackLog
from hero.sampling import sample_images
from hero.train import train

# HERO's default update is the likelihood one: a few short steps, not 300 of 16.
FAST = ["sampler.steps=4", "hero.encoder_epochs=3", "pg.timesteps_per_traj=2",
        "likelihood.steps_per_round=3", "likelihood.batch_size=4"]


@pytest.fixture(scope="module")
def hero_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "hero"
    cfg = load_config(None, FAST, prompt="two red squares", budget=16, images_per_round=8, out=str(out))
    return train(cfg, show_progress=False)


def test_hero_run_writes_the_run_folder(hero_run):
    log = FeedbackLog(hero_run.feedback_db)
    assert log.rounds() == [0, 1] and log.n_feedback() == 16
    metrics = hero_run.metrics()
    assert [m["round"] for m in metrics] == [0, 1]
    for key in ("seconds_sampling", "seconds_representation", "seconds_update", "good_rate", "feedback"):
        assert key in metrics[0]
    assert metrics[-1]["feedback"] == 16
    assert len(list(hero_run.round_dir(1).glob("images/*.png"))) == 8
    assert hero_run.latest_round() == 1
    assert (hero_run.path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert not (hero_run.round_dir(0) / "trajectories.pt").exists()  # freed once learned


def test_final_lora_loads_into_a_plain_pipeline(hero_run):
    pipe = load_pipeline("tiny-shapes")
    base = sample_images(pipe, "two red squares", 4, seed=0, steps=4)
    pipe.load_lora_weights(str(hero_run.path / "lora"))
    tuned = sample_images(pipe, "two red squares", 4, seed=0, steps=4)
    assert not np.array_equal(base, tuned)


def test_eval_reports_base_plain_and_guided(hero_run):
    result = evaluate(hero_run.path, n=8)
    for key in ("base_plain", "plain", "guided", "base_guided"):
        assert 0.0 <= result[key] <= 1.0
    assert result["n"] == 8 and result["rounds"] == 2
    for key in ("base_plain", "plain"):  # why images failed, consistent with the success rate
        assert sum(result["objects"][key].values()) == pytest.approx(1.0)
        assert all(0 < share <= 1 - result[key] + 1e-9 for share in result["failures"][key].values())


def test_cli_eval_of_an_earlier_round_and_of_one_not_on_disk(hero_run):
    from typer.testing import CliRunner

    from hero.cli import app

    res = CliRunner().invoke(app, ["eval", str(hero_run.path), "--n", "4", "--round", "0", "--json"])
    assert res.exit_code == 0, res.output
    line = res.output.strip().splitlines()[-1]  # the JSON line (a progress bar's \r may precede it)
    assert json.loads(line[line.index("{"):])["rounds"] == 1
    res = CliRunner().invoke(app, ["eval", str(hero_run.path), "--n", "4", "--round", "7"])
    assert res.exit_code == 2 and "no checkpoint of round 7" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("crash_after", ["sampling", "judging"])
def test_a_run_resumed_after_a_crash_mid_round_ends_where_the_uninterrupted_one_does(hero_run, tmp_path, monkeypatch,
                                                                                     crash_after):
    import hero.train as loop

    def crash(r: int, stage: str) -> None:
        if (r, stage) == (1, crash_after):
            raise KeyboardInterrupt(f"crash after {stage} round 1")

    save_round, judge = loop.RunFolder.save_round, loop.judge
    monkeypatch.setattr(loop.RunFolder, "save_round", lambda self, r, traj: (save_round(self, r, traj),
                                                                             crash(r, "sampling")))
    monkeypatch.setattr(loop, "judge", lambda *a, **k: (judge(*a, **k), crash(a[4], "judging"))[0])
    cfg = load_config(None, FAST, prompt="two red squares", budget=16, images_per_round=8, out=str(tmp_path / "r"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    monkeypatch.undo()
    run = train(cfg, resume=True, show_progress=False)
    # The round's images and judgements are reloaded, its learning redone from round 0's checkpoint with the
    # round's own generators: the same LoRA to the bit, and the same marks, as the run that never crashed.
    assert [m["good"] for m in run.metrics()] == [m["good"] for m in hero_run.metrics()]
    mine, theirs = (load_file(r.path / "lora" / "pytorch_lora_weights.safetensors") for r in (run, hero_run))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_loop_runs_on_a_tiny_sd_pipeline_with_vae(tmp_path, tiny_sd_pipeline):
    tiny_sd_pipeline.save_pretrained(tmp_path / "sd")
    cfg = load_config(None, FAST + ["sampler.guidance_scale=5"], model=str(tmp_path / "sd"), prompt="a red circle",
                      feedback="reward:jpeg", budget=8, images_per_round=4, out=str(tmp_path / "run"))
    run = train(cfg, show_progress=False)
    assert FeedbackLog(run.feedback_db).n_feedback() == 8
    pipe = load_pipeline(tmp_path / "sd")
    pipe.load_lora_weights(str(run.path / "lora"))
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())


def test_an_existing_run_needs_resume(hero_run):
    cfg = load_config(None, FAST, prompt="two red squares", budget=16, images_per_round=8, out=str(hero_run.path))
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, show_progress=False)


def test_cli_config_errors_name_the_key(tmp_path):
    res = CliRunner().invoke(app, ["train", "--prompt", "two red squares", "--out", str(tmp_path / "r"),
                                   "--set", "pg.clip_rnage=0.1"])
    assert res.exit_code == 2
    assert "pg.clip_rnage" in res.output and "pg.clip_range" in res.output


def _recorded_rounds(db) -> list[int]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return [r for (r,) in con.execute("SELECT round FROM rounds ORDER BY round")]
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
def test_resume_after_sigkill_loses_no_feedback(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hero.cli", "train", "--prompt", "two red squares", "--budget", "24",
           "--images-per-round", "8", "--out", str(out), "--no-progress"] + [a for s in FAST for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not _recorded_rounds(out / "feedback.sqlite") and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: round 0 judged, round 1 somewhere between sampling and learning
    proc.wait()
    judged = _recorded_rounds(out / "feedback.sqlite")
    assert judged, "the run never recorded a round before the kill"
    shown = {r: sorted(p.read_bytes() for p in (out / "rounds" / f"round_{r:03d}" / "images").glob("*.png"))
             for r in judged}
    pending = {r for r in range(3) if (out / "rounds" / f"round_{r:03d}" / "trajectories.pt").is_file()}
    res = subprocess.run(cmd[:4] + ["--resume", str(out), "--no-progress"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    log = FeedbackLog(out / "feedback.sqlite")
    assert log.rounds() == [0, 1, 2] and log.n_feedback() == 24  # each round judged exactly once
    for r in judged:  # the images judged before the crash are the ones on record, not resampled
        assert sorted(p.read_bytes() for p in (out / "rounds" / f"round_{r:03d}" / "images").glob("*.png")) == shown[r]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1, 2]
    # A round whose images were sampled before the kill was not sampled again: its sampling time is unknown (null).
    assert [m["round"] for m in metrics if m["seconds_sampling"] is None] == sorted(pending)
    state = torch.load(out / "checkpoints" / "round_002" / "state.pt", weights_only=False)
    assert state["memories"]["two red squares"]["best_latent"] is not None
