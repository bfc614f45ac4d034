"""`hero train --resume DIR` on real run folders, copied, moved and damaged: it works on DIR, recovers what is safe
to recover, and refuses anything else with one line naming the file, leaving the folder byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import hero.train as loop
from hero.cli import app
from hero.config import TrainConfig, load_config, save_config
from hero.runs.feedback_log import FeedbackLog
from hero.runs.folder import RunFolder
from hero.train import train

# HERO's default update is the likelihood one: a few short steps, not 300 of 16.
FAST = ["sampler.steps=4", "hero.encoder_epochs=3", "pg.timesteps_per_traj=2",
        "likelihood.steps_per_round=3", "likelihood.batch_size=4"]
LORA = Path("lora") / "pytorch_lora_weights.safetensors"


def _config(out: Path):
    return load_config(None, FAST, prompt="two red squares", budget=16, images_per_round=8, out=str(out))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A whole two-round run (rounds 0 and 1 learned, their trajectories dropped)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(_config(out), show_progress=False)
    return out


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> Path:
    """The same run stopped after judging round 1: round 0 learned, round 1 judged with its trajectories on disk."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    judge = loop.judge

    def judge_then_crash(*args, **kwargs):
        feedback = judge(*args, **kwargs)
        if args[4] == 1:
            raise KeyboardInterrupt("crash after judging round 1")
        return feedback

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "judge", judge_then_crash)
        with pytest.raises(KeyboardInterrupt):
            train(_config(out), show_progress=False)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def resume(folder: Path, *extra: str):
    return CliRunner().invoke(app, ["train", "--resume", str(folder), "--no-progress", *extra])


def refused(folder: Path, culprit: Path, *extra: str, says: str = "") -> str:
    """Resume ``folder``: exit 2, one line naming ``culprit`` (and ``says``), and the folder unchanged."""
    before = snapshot(folder)
    res = resume(folder, *extra)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith(f"error: {culprit}"), res.stderr
    assert says in lines[0], lines[0]
    assert snapshot(folder) == before
    return lines[0]


def rounds_of(run: Path) -> list[int]:
    return [m["round"] for m in RunFolder(run).metrics()]


def edit_config(run: Path, **changes) -> None:
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    save_config(TrainConfig.model_validate({**cfg.model_dump(mode="json"), **changes}), run / "config.yaml")


# -- the folder locates itself ------------------------------------------------------------------------------------


def test_a_copied_run_resumes_in_the_copy_and_leaves_the_original_alone(finished, tmp_path):
    original = copy_of(finished, tmp_path / "a")
    before = snapshot(original)
    copy = tmp_path / "b" / "copy"
    shutil.copytree(original, copy)
    res = resume(copy, "--budget", "24")
    assert res.exit_code == 0, res.output
    assert snapshot(original) == before  # byte for byte: the stored out: pointed here, and was ignored
    assert rounds_of(copy) == [0, 1, 2] and FeedbackLog(copy / "feedback.sqlite").rounds() == [0, 1, 2]
    assert TrainConfig.from_yaml(copy / "config.yaml").out == str(copy)


def test_a_moved_run_goes_on_where_it_is_without_asking_again(finished, tmp_path):
    old = copy_of(finished, tmp_path / "a")
    with FeedbackLog(old / "feedback.sqlite") as log:  # closed before the move: no -wal/-shm left to vanish mid-copy
        judged = log.all_rounds()
    new = tmp_path / "b" / "moved"
    new.parent.mkdir()  # a rename, as `mv` within one disk does (without the parent shutil copies file by file)
    shutil.move(old, new)
    res = resume(new, "--budget", "24")
    assert res.exit_code == 0, res.output
    assert not old.exists()  # the stored out: is not re-created
    assert rounds_of(new) == [0, 1, 2]  # went on at round 2, not from round 0
    assert FeedbackLog(new / "feedback.sqlite").all_rounds()[:2] == judged


# -- what is recovered --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("marker", [None, "0"])
def test_a_missing_or_stale_latest_marker_is_recovered_from_agreeing_checkpoints(finished, tmp_path, marker):
    run = copy_of(finished, tmp_path)
    latest = run / "checkpoints" / "latest"
    latest.unlink()
    if marker is not None:
        latest.write_text(marker)
    res = resume(run, "--budget", "24")
    assert res.exit_code == 0, res.output
    assert f"recovered {latest}" in res.stderr
    assert rounds_of(run) == [0, 1, 2]  # not 0, 1, 0, 1, 2: rounds 0 and 1 were not learned again
    assert latest.read_text() == "2"


def test_a_torn_line_of_a_learned_round_is_rebuilt_from_the_feedback_log(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0] + lines[1][:25])  # a crash (or power loss) mid-append
    res = resume(run)
    assert res.exit_code == 0, res.output
    assert f"recovered {run / 'metrics.jsonl'}" in res.stderr
    text = (run / "metrics.jsonl").read_text()
    assert text.startswith(lines[0])
    was, now = json.loads(lines[1]), RunFolder(run).metrics()[1]
    assert now["recovered"] is True
    assert {k: now[k] for k in ("round", "images", "feedback", "good", "best")} == \
        {k: was[k] for k in ("round", "images", "feedback", "good", "best")}


def test_a_torn_line_of_an_unlearned_round_is_dropped_and_the_round_learned_again(finished, crashed, tmp_path):
    run = copy_of(crashed, tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"round": 1, "images": 8, "feedba')
    res = resume(run)
    assert res.exit_code == 0, res.output
    assert rounds_of(run) == [0, 1] and "recovered" not in RunFolder(run).metrics()[1]
    assert (run / LORA).read_bytes() == (finished / LORA).read_bytes()  # as the run that never stopped


def test_missing_images_of_a_round_still_to_learn_are_re_rendered(crashed, tmp_path):
    run = copy_of(crashed, tmp_path)
    images = run / "rounds" / "round_001"
    before = {k: v for k, v in snapshot(images).items() if k != "trajectories.pt"}  # dropped once learned
    (images / "images" / "0003.png").unlink()
    (images / "grid.png").write_bytes(b"")
    res = resume(run)
    assert res.exit_code == 0, res.output
    assert f"recovered {images / 'images'}: re-rendered 2 missing file(s)" in res.stderr
    assert snapshot(images) == before  # the same bytes as those shown and judged


def test_missing_images_of_a_learned_round_are_one_warning(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "rounds" / "round_001" / "images" / "0002.png").unlink()
    res = resume(run)
    assert res.exit_code == 0, res.output
    warning = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "round_001 (1)" in warning[0] and "cannot be re-rendered" in warning[0]
    assert not (run / "rounds" / "round_001" / "images" / "0002.png").exists()


# -- what is refused: one line naming the file, nothing written ---------------------------------------------------


@pytest.mark.parametrize("text", ["", "-7", "two\n"])
def test_an_unreadable_latest_marker(finished, tmp_path, text):
    run = copy_of(finished, tmp_path)
    (run / "checkpoints" / "latest").write_text(text)
    refused(run, run / "checkpoints" / "latest")


def test_a_latest_marker_naming_a_missing_checkpoint(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "checkpoints" / "round_001")
    refused(run, run / "checkpoints" / "round_001", says="is missing")


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped"])
@pytest.mark.parametrize("name", ["state.pt", "lora/pytorch_lora_weights.safetensors", "settings.json"])
def test_a_damaged_checkpoint_file(finished, tmp_path, name, damage):
    run = copy_of(finished, tmp_path)
    path = run / "checkpoints" / "round_001" / name
    data = bytearray(path.read_bytes())
    if damage == "empty":
        data = bytearray()
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:  # one byte of the payload (for safetensors: the header's opening brace)
        data[8 if name.endswith("safetensors") else len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(run, path)


@pytest.mark.parametrize("damage", ["deleted", "emptied", "garbage", "round deleted", "mark changed"])
def test_a_damaged_feedback_log(finished, tmp_path, damage):
    run = copy_of(finished, tmp_path)
    db = run / "feedback.sqlite"
    if damage == "deleted":
        db.unlink()
    elif damage == "emptied":
        db.write_bytes(b"")
    elif damage == "garbage":
        db.write_bytes(b"not a database, " * 256)
    else:
        with sqlite3.connect(db) as con:
            if damage == "round deleted":
                for table in ("scores", "judgements", "rounds"):
                    con.execute(f"DELETE FROM {table} WHERE round = 0")
            else:  # an image not picked as best flips its mark: the log no longer says what was learned
                con.execute("UPDATE judgements SET good = 1 - good WHERE round = 1 AND is_best = 0 AND image = "
                            "(SELECT MIN(image) FROM judgements WHERE round = 1 AND is_best = 0)")
        con.close()
    says = {"deleted": "is missing", "emptied": "is empty", "garbage": "not a readable SQLite",
            "round deleted": "no feedback for round 0", "mark changed": "metrics.jsonl recorded"}[damage]
    refused(run, db, says=says)


@pytest.mark.parametrize("damage", ["deleted", "middle line"])
def test_damaged_metrics(finished, tmp_path, damage):
    run = copy_of(finished, tmp_path)
    path = run / "metrics.jsonl"
    if damage == "deleted":
        path.unlink()
    else:
        lines = path.read_text().splitlines(keepends=True)
        path.write_text(lines[0][:20] + "\n" + lines[1])
    refused(run, path)


@pytest.mark.parametrize("key, value", [("prompt", "three blue circles"), ("model", "/models/other"),
                                        ("lora", {"rank": 4})])
def test_a_setting_edited_in_config_yaml(finished, tmp_path, key, value):
    run = copy_of(finished, tmp_path)
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    if isinstance(value, dict):
        value = {**getattr(cfg, key).model_dump(mode="json"), **value}
    edit_config(run, **{key: value})
    line = refused(run, run / "config.yaml", says="--set reward_model.*/web.*")
    assert key in line


def test_an_unreadable_config_yaml(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "config.yaml").write_text("prompt: [unclosed\n")
    refused(run, run / "config.yaml")


def test_a_prompt_edited_in_a_run_without_settings_json_is_refused_by_the_log(crashed, tmp_path):
    run = copy_of(crashed, tmp_path)
    (run / "checkpoints" / "round_000" / "settings.json").unlink()  # as a run from before settings.json
    edit_config(run, prompt="three blue circles")
    refused(run, run / "config.yaml", says="judged for 'two red squares'")


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_trajectories_of_a_judged_round(crashed, tmp_path, damage):
    run = copy_of(crashed, tmp_path)
    path = run / "rounds" / "round_001" / "trajectories.pt"
    path.write_bytes(b"" if damage == "empty" else path.read_bytes()[:1000])
    refused(run, path)


def test_a_judged_round_without_trajectories_or_its_images_is_refused(crashed, tmp_path):
    run = copy_of(crashed, tmp_path)
    (run / "rounds" / "round_001" / "trajectories.pt").unlink()
    (run / "rounds" / "round_001" / "images" / "0005.png").unlink()
    refused(run, run / "rounds" / "round_001" / "trajectories.pt", says="cannot be checked")


def _rewound(finished: Path, tmp_path: Path) -> Path:
    """The finished run taken back to round 0's checkpoint: round 1 judged, its trajectories long gone."""
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "checkpoints" / "round_001")
    (run / "checkpoints" / "latest").write_text("0")
    return run


def test_a_judged_round_sampled_again_to_the_same_images_learns_from_its_judgement(finished, tmp_path):
    run = _rewound(finished, tmp_path)
    rows = FeedbackLog(run / "feedback.sqlite").all_rounds()
    res = resume(run)
    assert res.exit_code == 0, res.output
    assert "round 1 was judged but its trajectories are gone" in res.stderr
    assert FeedbackLog(run / "feedback.sqlite").all_rounds() == rows  # not asked again
    assert rounds_of(run) == [0, 1] and (run / LORA).read_bytes() == (finished / LORA).read_bytes()


def test_a_judged_round_sampled_again_to_other_images_is_refused(finished, tmp_path):
    run = _rewound(finished, tmp_path)
    image = run / "rounds" / "round_001" / "images" / "0000.png"
    Image.fromarray(255 - np.asarray(Image.open(image).convert("RGB"))).save(image)  # not what is sampled
    res = resume(run)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert errors[0].startswith(f"error: {image.parent}: round 1 sampled again differs from the images judged")


def test_a_run_without_any_checkpoint_is_replayed_from_its_log_to_the_same_lora(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "checkpoints")  # every round judged, nothing learned: each is sampled again and checked
    res = resume(run)
    assert res.exit_code == 0, res.output
    assert rounds_of(run) == [0, 1] and (run / "checkpoints" / "latest").read_text() == "1"
    assert (run / LORA).read_bytes() == (finished / LORA).read_bytes()
