"""D3PO offline on the built-in model at a tiny size: `hero sample --pairs` -> `hero label` (the real server, driven
over HTTP) -> annotations.json -> `hero train --from-annotations` -> a loadable LoRA; and every malformed
annotation file is a one-line error naming the problem."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from run_checks import assert_lora_loads
from safetensors.torch import load_file
from typer.testing import CliRunner

from hero.cli import app
from hero.feedback.annotations import read_annotations
from hero.runs.feedback_log import FeedbackLog
from hero.runs.folder import RunFolder
from hero.web import export_run, label_run

runner = CliRunner()
PROMPT = "two red squares"


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """4 images (2 noise-sharing pairs) of tiny-shapes, 3 sampler steps, with their trajectories."""
    out = tmp_path_factory.mktemp("d3po") / "samples"
    res = runner.invoke(app, ["sample", "--pairs", "--prompt", PROMPT, "--n", "4", "--steps", "3", "--seed", "0",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "hero label" in res.output
    return out


def test_sample_pairs_writes_noise_sharing_pairs_and_trajectories(samples):
    meta = json.loads((samples / "sample.json").read_text())
    assert meta["prompt"] == PROMPT and meta["n"] == 4 and meta["steps"] == 3
    assert meta["pairs"] == [["0000.png", "0001.png"], ["0002.png", "0003.png"]]
    traj = RunFolder(samples).load_round(0)
    assert len(traj) == 4 and traj.log_probs.shape == (4, 3) and torch.isfinite(traj.log_probs).all()
    assert torch.equal(traj.start_noise[0], traj.start_noise[1]) and not torch.equal(traj.start_noise[1],
                                                                                      traj.start_noise[2])
    assert sorted(p.name for p in (samples / "rounds/round_000/images").glob("*.png")) == [
        "0000.png", "0001.png", "0002.png", "0003.png"]
    assert (samples / "grid.png").is_file()


def test_sample_pairs_refuses_odd_counts_and_an_existing_folder(samples, tmp_path):
    res = runner.invoke(app, ["sample", "--pairs", "--prompt", PROMPT, "--n", "3", "--steps", "2",
                              "--out", str(tmp_path / "odd")])
    assert res.exit_code == 2 and "even" in res.stderr
    res = runner.invoke(app, ["sample", "--pairs", "--prompt", PROMPT, "--n", "2", "--steps", "2",
                              "--out", str(samples)])
    assert res.exit_code == 2 and "already holds samples" in res.stderr


def _label_over_http(samples: Path) -> int:
    """`hero label S` in a thread; answer its one pairwise round through the real server: 0001 beats 0000, a tie."""
    urls: list[str] = []
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(n=label_run(samples, port=0, on_ready=urls.append)),
                         daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not urls:
        assert time.monotonic() < deadline and t.is_alive(), "hero label printed no URL"
        time.sleep(0.02)
    with httpx.Client(base_url=urls[0].split("/?", 1)[0], timeout=10) as c:
        assert c.get(urls[0]).status_code == 303
        while (state := c.get("/api/state").json())["phase"] != "judging":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert state["kind"] == "pairs" and state["pairs"] == [[0, 1], [2, 3]] and state["prompt"] == PROMPT
        res = c.post("/api/submit-pairs", json={"round": 0, "winners": [[1, 0]], "ties": [[2, 3]]})
        assert res.status_code == 200, res.text
        t.join(20)
    return result["n"]


def test_full_offline_path_label_then_train(samples, tmp_path):
    assert _label_over_http(samples) == 1
    assert FeedbackLog(samples / "feedback.sqlite").n_feedback() == 4
    annotations = json.loads((samples / "annotations.json").read_text())
    assert annotations == [{"winner": "0001.png", "loser": "0000.png"}, {"tie": ["0002.png", "0003.png"]}]

    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--algo", "d3po", "--from-annotations", str(samples / "annotations.json"),
                              "--out", str(out), "--set", "pg.timesteps_per_traj=2"])
    assert res.exit_code == 0, res.output
    assert "1 preference(s) (4 feedback)" in res.output  # one image judged = one feedback, the tie's too
    run = RunFolder(out)
    (metrics,) = run.metrics()
    assert metrics["feedback"] == 4 and metrics["pairs"] == 1 and metrics["ties"] == 1
    assert metrics["d3po_grad_steps"] >= 1 and run.latest_round() == 0
    lora = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert any(k.endswith(".lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())  # it learned
    assert_lora_loads(run)
    assert json.loads((out / "annotations.json").read_text())["feedback"] == 4
    # The judgements are in the run's own feedback log, so `hero export RUN` lists every one.
    assert FeedbackLog(out / "feedback.sqlite").n_feedback() == 4
    exported = export_run(out)
    assert exported["feedback"] == 4 and exported["pairs"] == 1
    lines = [json.loads(x) for x in (out / "export" / "feedback.jsonl").read_text().splitlines()]
    assert [x["beats"] for x in lines] == [[], [0], [], []] and {x["source"] for x in lines} == {"annotations"}
    # `hero export S`'s pairs.jsonl is an annotation file too (ties are not pairs: 2 feedback).
    export_run(samples)
    ann = read_annotations(samples / "export" / "pairs.jsonl")
    assert ann.pairs == [(1, 0)] and ann.ties == [] and ann.feedback == 2
    res = runner.invoke(app, ["train", "--from-annotations", str(samples / "annotations.json"), "--out", str(out)])
    assert res.exit_code == 2 and "already holds a run" in res.stderr


def test_hand_written_annotations_by_name_path_or_index(samples, tmp_path):
    path = samples / "hand.json"
    path.write_text(json.dumps([{"winner": "rounds/round_000/images/0003.png", "loser": 2},
                                {"winner": "0000.png", "loser": "0001.png"}]))
    ann = read_annotations(path)
    assert ann.pairs == [(3, 2), (0, 1)] and ann.ties == [] and ann.feedback == 4


@pytest.mark.parametrize("content, problem", [
    ('[{"winner": "0009.png", "loser": "0000.png"}]', 'entry 1: no image "0009.png"'),
    ('[{"winner": "0001.png", "loser": "0002.png"}]', "entry 1: 0001.png and 0002.png do not share a starting noise"),
    ('[{"winner": "0001.png", "loser": "0000.png"}, {"winner": "0000.png", "loser": "0001.png"}]',
     "entry 2: the pair 0000.png/0001.png is already judged in entry 1"),
    ('[{"winner": "0001.png", "loser": "0001.png"}]', "entry 1: 0001.png is compared with itself"),
    ('[{"winner": "0001.png"}]', 'entry 1: expected {"winner": IMAGE, "loser": IMAGE}'),
    ('[{"winner": true, "loser": 0}]', "entry 1: no image true"),
    ('[{"tie": ["0000.png", "0001.png"]}]', "every pair is a tie: nothing to learn from"),
    ('{"winner": "0001.png", "loser": "0000.png"}', "expected a JSON list of annotations"),
    ("[]", "no annotations in the file"),
    ('[{"winner": "0001.png", "loser": "0000.png"},]', "not valid JSON"),
])
def test_malformed_annotations_are_one_line_errors(samples, content, problem):
    path = samples / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_annotations(path)
    message = str(err.value)
    assert problem in message and str(path) in message and "\n" not in message


def test_malformed_annotations_through_the_cli(samples, tmp_path):
    path = samples / "bad.json"
    path.write_text('[{"winner": "0001.png", "loser": "0003.png"}]')
    res = runner.invoke(app, ["train", "--algo", "d3po", "--from-annotations", str(path), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    assert res.stderr.startswith("error: ") and "do not share a starting noise" in res.stderr
    assert not (tmp_path / "r").exists()  # nothing written
    for args, problem in ((["--from-annotations", str(tmp_path / "nope.json")], "not found"),
                          (["--from-annotations", str(path), "--algo", "hero"], "trains D3PO"),
                          (["--from-annotations", str(path), "--budget", "8"], "--budget cannot be used")):
        path.write_text('[{"winner": "0001.png", "loser": "0000.png"}]')
        res = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "r")])
        assert res.exit_code == 2 and problem in res.stderr and res.stderr.count("\n") == 1, res.output
    stray = tmp_path / "stray.json"  # an annotation file away from any sample folder
    stray.write_text('[{"winner": "0001.png", "loser": "0000.png"}]')
    res = runner.invoke(app, ["train", "--from-annotations", str(stray), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no sample.json" in res.stderr
