"""Prompt-set runs: every image judged for its own prompt, a best per prompt, resume after SIGKILL to the bit,
per-prompt export and evaluation, and the CLI's one-line errors for a bad prompt file."""

import json

import pytest
import torch
from run_checks import assert_lora_loads, kill_resume_and_compare
from typer.testing import CliRunner

from hero.cli import app
from hero.config import load_config
from hero.evaluate import evaluate
from hero.prompts import PromptSpec
from hero.runs.feedback_log import FeedbackLog
from hero.train import train
from hero.web.label import export_run

PROMPTS = ['two red squares', '{"prompt": "one blue circle", "hidden_background": "black"}']
FAST = ["sampler.steps=4", "pg.timesteps_per_traj=2", "likelihood.steps_per_round=3", "likelihood.batch_size=4",
        "hero.encoder_epochs=2", "hero.unjudged=4"]


def _specs() -> list[dict]:
    return [{"prompt": "two red squares"}, {"prompt": "one blue circle", "hidden_background": "black"}]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["hero", "raft"])
def test_a_prompt_set_run_judges_per_prompt_and_resumes_after_sigkill_to_the_bit(algo, tmp_path):
    whole = train(load_config(None, FAST, algo=algo, prompts=_specs(), budget=24, images_per_round=8,
                              out=str(tmp_path / "whole")), show_progress=False)
    assert_lora_loads(whole)
    metrics = whole.metrics()
    assert set(metrics[0]["good_rate_by_prompt"]) == {"two red squares", "one blue circle"}
    assert set(metrics[0]["bests"]) == {"two red squares", "one blue circle"}  # round 0 picks a best per prompt
    with FeedbackLog(whole.feedback_db) as log:
        for fb in log.all_rounds():  # even mix: 8 images over 2 prompts, grouped
            assert fb.prompts == ["two red squares"] * 4 + ["one blue circle"] * 4
            assert all(fb.prompts[b] == p for p, b in metrics[fb.round]["bests"].items())
    exported = export_run(whole.path)
    lines = [json.loads(x) for x in (whole.path / "export" / "feedback.jsonl").read_text().splitlines()]
    assert exported["feedback"] == 24 and [x["prompt"] for x in lines[:8]] == ["two red squares"] * 4 + [
        "one blue circle"] * 4
    pairs = [json.loads(x) for x in (whole.path / "export" / "pairs.jsonl").read_text().splitlines()]
    assert all((p["winner"] < 4) == (p["loser"] < 4) for p in pairs)  # preferences only within a prompt
    if algo == "hero":  # one memory per prompt, its best among that prompt's images
        state = torch.load(whole.checkpoint_dir(2) / "state.pt", weights_only=False)
        assert set(state["memories"]) == {"two red squares", "one blue circle"}

    out = tmp_path / "killed"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    kill_resume_and_compare(["--algo", algo, "--prompts", str(prompts), "--budget", "24", "--images-per-round", "8",
                             "--out", str(out)] + [a for s in FAST for a in ("--set", s)], out, whole)

    result = evaluate(whole.path, n=4, prompts=[PromptSpec(prompt="two red squares"),
                                                PromptSpec(prompt="three green triangles")])
    rows = result["prompts"]
    assert rows["two red squares"]["trained"] and not rows["three green triangles"]["trained"]
    assert result["mean"]["plain"] == pytest.approx((rows["two red squares"]["plain"] +
                                                     rows["three green triangles"]["plain"]) / 2)
    assert ("guided" in rows["two red squares"]) == (algo == "hero") and "guided" not in rows["three green triangles"]


@pytest.mark.parametrize("lines, says", [
    ([], "holds no prompt"),
    (["two red squares", '{"prompt": "one red square", "hiden_background": "black"}'],
     "prompts.txt:2: unknown option 'hiden_background'"),
    (["two red squares", "five red squares"], "prompts.txt:2: prompt 'five red squares' is not a toy-world prompt"),
    (["two red squares", "two red squares"], "prompts.txt:2: 'two red squares' is also on line 1"),
])
def test_a_bad_prompt_file_stops_hero_train_with_one_line(tmp_path, lines, says):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(x + "\n" for x in lines))
    res = CliRunner().invoke(app, ["train", "--prompts", str(path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and says in res.output and res.output.count("\n") == 1, res.output
    assert not (tmp_path / "run").exists()
