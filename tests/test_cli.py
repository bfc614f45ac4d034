import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from hero.cli import app

runner = CliRunner()


def flat(text: str) -> str:
    """Output with rich's box drawing and line wrapping removed."""
    return " ".join(text.replace("│", " ").split())


def test_sample_with_judge_prints_rates_as_last_line(tmp_path):
    res = runner.invoke(app, ["sample", "--prompt", "three blue circles", "--n", "4", "--steps", "3", "--seed", "0",
                              "--out", str(tmp_path), "--judge"])
    assert res.exit_code == 0, res.output
    rates = json.loads(res.output.strip().splitlines()[-1])
    assert {"colour", "shape", "count", "all", "n", "seconds"} <= rates.keys()
    assert rates["n"] == 4 and 0.0 <= rates["all"] <= 1.0
    assert len(list((tmp_path / "images").glob("*.png"))) == 4
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "verdicts.png").is_file()
    assert len((tmp_path / "verdicts.jsonl").read_text().splitlines()) == 4


def test_bad_inputs_are_one_clear_error(tmp_path):
    res = runner.invoke(app, ["sample", "--prompt", "three blue circles", "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a built-in model" in flat(res.output)
    res = runner.invoke(app, ["sample", "--prompt", "a purple cat", "--judge"])
    assert res.exit_code == 2 and "not a toy-world prompt" in flat(res.output)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_machine_lacks_is_one_line_and_writes_nothing(tmp_path):
    res = runner.invoke(app, ["train", "--prompt", "two red squares", "--feedback", "sim", "--set", "device=cuda",
                              "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 2 and "device=cuda: this machine has no cuda device" in flat(res.output)
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "hero.cli", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("sample", "pretrain-toy", "check-judge"):
        assert cmd in out.stdout


def test_resume_goes_on_with_another_judge_and_a_larger_budget(tmp_path):
    """Pre-train with AI feedback (a reward function), then continue the same run with the simulated human."""
    from hero.config import TrainConfig
    from hero.runs.feedback_log import FeedbackLog

    run = tmp_path / "run"
    fast = ["--set", "sampler.steps=3", "--set", "pg.timesteps_per_traj=2", "--set", "hero.encoder_epochs=2",
            "--set", "likelihood.steps_per_round=3", "--set", "likelihood.batch_size=4"]
    res = runner.invoke(app, ["train", "--prompt", "two red squares", "--feedback", "reward:jpeg", "--budget", "4",
                              "--images-per-round", "4", "--out", str(run), "--no-progress", *fast])
    assert res.exit_code == 0, res.output
    # Only the judge, the budget and reward_model.* / web.* may change; the rest is the run's.
    res = runner.invoke(app, ["train", "--resume", str(run), "--prompt", "three blue circles", "--no-progress"])
    assert res.exit_code == 2 and "--prompt cannot change on --resume" in flat(res.output)
    res = runner.invoke(app, ["train", "--resume", str(run), "--set", "lora.rank=4", "--no-progress"])
    assert res.exit_code == 2 and "lora.rank=4" in flat(res.output)
    assert TrainConfig.from_yaml(run / "config.yaml").feedback == "reward:jpeg"  # refused: nothing changed
    res = runner.invoke(app, ["train", "--resume", str(run), "--feedback", "sim", "--budget", "8", "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    assert (cfg.feedback, cfg.budget, cfg.prompt) == ("sim", 8, "two red squares")
    log = FeedbackLog(run / "feedback.sqlite")
    assert [log.get_round(r).source for r in (0, 1)] == ["reward:jpeg", "sim"] and log.n_feedback() == 8
