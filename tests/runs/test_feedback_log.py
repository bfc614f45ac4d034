"""The feedback log (SQLite) and atomic writes: durable, append-only, all-or-nothing rounds, crash-safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hero.runs import (
    DuplicateRound,
    FeedbackLog,
    InvalidFeedback,
    Relabel,
    RoundFeedback,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    read_jsonl,
)

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def log(tmp_path: Path):
    with FeedbackLog(tmp_path / "feedback.sqlite") as fl:
        yield fl


def test_record_and_read_back(log: FeedbackLog):
    log.record_round(0, "three green triangles", [True, False, True, False], best=2, source="sim")
    log.record_round(1, "three green triangles", [False, False], best=None, source="web")
    fb = log.get_round(0)
    assert isinstance(fb, RoundFeedback)
    assert (fb.round, fb.prompt, fb.good, fb.best, fb.source, fb.n_images) == (
        0, "three green triangles", [True, False, True, False], 2, "sim", 4)
    assert fb.submitted_at > 0
    assert log.get_round(1).best is None
    assert log.get_round(7) is None
    assert log.rounds() == [0, 1]
    assert log.n_feedback() == 6  # one image judged = one feedback


def test_relabels_count_as_feedback_and_a_rerun_replaces_them(log: FeedbackLog):
    log.record_round(0, "three green triangles", [True, False, False, False], best=0, source="sim")
    looked = [Relabel(1, "two blue circles on white", True, 0.9, "sim"), Relabel(3, None, None, None, "sim")]
    with pytest.raises(InvalidFeedback, match="not recorded"):
        log.record_relabels(1, looked)  # round 1 was never judged
    with pytest.raises(InvalidFeedback, match=r"distinct images in \[0, 4\)"):
        log.record_relabels(0, [Relabel(4, None, None, None, "sim")])
    assert log.relabels(0) == [] and log.n_feedback() == 4  # the refused calls wrote nothing
    log.record_relabels(0, looked)
    assert log.relabels(0) == looked and log.n_feedback() == 6  # each image looked at is one feedback
    log.record_relabels(0, looked[:1])  # the round learned again after a crash: its relabels replace the old
    assert log.relabels(0) == looked[:1] and log.n_feedback() == 5
    assert FeedbackLog(log.path).relabels(0) == looked[:1]  # committed, visible to a second connection


def test_duplicate_round_is_refused_and_changes_nothing(log: FeedbackLog):
    log.record_round(0, "p", [True, False], best=0, source="sim")
    before = log.get_round(0)
    with pytest.raises(DuplicateRound):
        log.record_round(0, "other", [False, True, True], best=1, source="web")
    with pytest.raises(DuplicateRound):
        log.record_pairs(0, "other", [(0, 1)], n_images=2, source="web")
    assert isinstance(DuplicateRound("x"), ValueError)
    assert log.get_round(0) == before
    assert log.n_feedback() == 2


@pytest.mark.parametrize("good, best", [
    ([True, False], 2),  # out of range
    ([True, False], -1),
    ([True, False], 1),  # best not marked good
    ([], None),  # nothing judged
])
def test_invalid_feedback_raises_and_writes_nothing(log: FeedbackLog, good, best):
    with pytest.raises(InvalidFeedback):
        log.record_round(3, "p", good, best=best, source="sim")
    assert log.rounds() == [] and log.get_round(3) is None and log.n_feedback() == 0
    log.record_round(3, "p", [True, False], best=0, source="sim")  # the round is still free
    assert log.rounds() == [3]


@pytest.mark.parametrize("pairs, n", [([(0, 2)], 2), ([(1, 1)], 3), ([(0, 1), (0, 1)], 3), ([(0, 1, 2)], 3),
                                      ([(0, 1)], 1)])
def test_invalid_pairs_raise_and_write_nothing(log: FeedbackLog, pairs, n):
    with pytest.raises(InvalidFeedback):
        log.record_pairs(0, "p", pairs, n_images=n, source="judge")
    assert log.rounds() == [] and log.n_feedback() == 0


def test_preference_pairs(log: FeedbackLog):
    # images: 0 good, 1 best, 2 not good, 3 not good
    log.record_round(0, "p", [True, True, False, False], best=1, source="sim")
    log.record_pairs(1, "p", [(2, 0), (1, 3)], n_images=4, source="judge")
    pairs = log.preference_pairs()
    assert sorted(pairs) == sorted([(0, 1, 0), (0, 1, 2), (0, 1, 3),  # best beats every other image
                                    (0, 0, 2), (0, 0, 3),  # good beats not-good
                                    (1, 1, 3), (1, 2, 0)])  # explicit pairs
    assert len(pairs) == len(set(pairs))
    assert log.get_round(1).pairs == [(1, 3), (2, 0)] and log.get_round(1).good == []
    assert log.n_feedback() == 8


def test_export_round_trips(log: FeedbackLog, tmp_path: Path):
    log.record_round(0, "two blue circles", [True, False, True], best=2, source="sim:0.1")
    log.record_round(1, 'a "quoted" prompt, ünïcode', [False, False], best=None, source="web")
    log.record_pairs(2, "p", [(0, 1), (2, 1)], n_images=3, source="judge")
    out = tmp_path / "export" / "feedback.jsonl"
    assert log.export_jsonl(out) == 8  # one line per judged image
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {"round": 0, "image": 0, "prompt": "two blue circles", "source": "sim:0.1",
                        "submitted_at": lines[0]["submitted_at"], "n_images": 3, "good": True, "best": False}
    assert [x["best"] for x in lines[:3]] == [False, False, True]
    assert read_jsonl(out) == [log.get_round(r) for r in log.rounds()]


def test_a_prompt_set_round_keeps_each_images_prompt_and_a_best_per_prompt(log: FeedbackLog, tmp_path: Path):
    prompts = ["two red circles"] * 3 + ["one blue square"] * 2
    log.record_round(0, "ignored", [True, False, True, True, False], best=None, source="sim", prompts=prompts,
                     bests=[2, 3])
    fb = log.get_round(0)
    assert fb.prompts == prompts and fb.bests == (2, 3) and fb.best is None and fb.best_indices == (2, 3)
    assert fb.prompt == "two red circles\none blue square" and fb.image_prompt(4) == "one blue square"
    # Pairs stay within a prompt: best beats the others of its prompt, good beats not-good of the same prompt.
    assert sorted(log.preference_pairs()) == [(0, 0, 1), (0, 2, 0), (0, 2, 1), (0, 3, 4)]
    out = tmp_path / "feedback.jsonl"
    assert log.export_jsonl(out) == 5
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["prompt"] for x in lines] == prompts and [x["best"] for x in lines] == [False, False, True, True, False]
    assert read_jsonl(out) == [fb]


@pytest.mark.parametrize("prompts, bests, says", [
    (["a", "a", "a"], [0, 2], "more than one best image for a prompt"),
    (["a", "b"], [0], "3 images"),  # fewer prompts than images
    (["a", "a", "b"], [2, 5], "not an image index"),
    (["a", "a", "b"], [1], "not marked good"),
])
def test_a_bad_prompt_set_round_writes_nothing(log: FeedbackLog, prompts, bests, says):
    with pytest.raises(InvalidFeedback, match=says):
        log.record_round(0, "p", [True, False, True], best=None, source="sim", prompts=prompts, bests=bests)
    assert log.rounds() == [] and log.n_feedback() == 0


def test_survives_reopen_and_a_second_connection(tmp_path: Path):
    path = tmp_path / "fb.sqlite"
    with FeedbackLog(path) as a:
        # Durable by construction: WAL (readers never block the writer) and an fsync at every commit.
        assert a._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert a._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        a.record_round(0, "p", [True], best=0, source="sim")
        with FeedbackLog(path) as b:  # e.g. the web server's process
            assert b.get_round(0).good == [True]
            b.record_round(1, "p", [False], best=None, source="web")
        assert a.rounds() == [0, 1]
        with pytest.raises(DuplicateRound):
            a.record_round(1, "p", [True], best=0, source="sim")
    with FeedbackLog(path) as c:
        assert c.rounds() == [0, 1] and c.n_feedback() == 2


def test_threads_share_one_instance(log: FeedbackLog):
    errors = []

    def worker(start: int) -> None:
        try:
            for r in range(start, start + 20):
                log.record_round(r, "p", [True, False, True], best=0, source="web")
                assert log.get_round(r).good == [True, False, True]
        except Exception as e:  # surfaced below: pytest does not see exceptions raised in threads
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i * 100,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(log.rounds()) == 60 and log.n_feedback() == 180


_WRITER = """
import sys
from hero.runs import FeedbackLog
log = FeedbackLog(sys.argv[1])
n = int(sys.argv[2])
r = len(log.rounds())  # resume after the previous crash
while True:
    good = [(r + i) % 3 != 0 for i in range(n)]
    log.record_round(r, f"prompt {r}", good, best=good.index(True), source="sim")
    print(r, flush=True)  # reported only once record_round returned, i.e. committed
    r += 1
"""


def _record_until_killed(path: Path, n: int, kill_after: int) -> list[int]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n)], stdout=subprocess.PIPE, text=True,
                            env=env)
    reported: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(reported) < kill_after and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            reported.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)  # while it keeps writing: most likely inside a transaction
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert len(reported) == kill_after, f"writer stopped early (rc={proc.returncode})"
    return reported


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_mid_recording_loses_no_committed_round(tmp_path: Path):
    path, n = tmp_path / "fb.sqlite", 64
    reported: list[int] = []
    for kill_after in (7, 25, 13):  # crash, reopen and go on, three times
        reported += _record_until_killed(path, n, kill_after)
    with FeedbackLog(path) as log:
        rounds = log.rounds()
        assert set(reported) <= set(rounds)  # every acknowledged round survived
        assert rounds == list(range(len(rounds)))  # and nothing else but whole rounds, in order
        for r in rounds:
            fb = log.get_round(r)
            good = [(r + i) % 3 != 0 for i in range(n)]
            assert (fb.prompt, fb.good, fb.best, fb.n_images) == (f"prompt {r}", good, good.index(True), n)
        assert log.n_feedback() == n * len(rounds)
        log.record_round(len(rounds), "resumed", [True], best=0, source="sim")  # and the log is still writable


def test_atomic_writes(tmp_path: Path):
    import torch

    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "ckpt.pt")
    assert torch.equal(torch.load(tmp_path / "ckpt.pt")["w"], torch.arange(3))

    def failing_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_torch_save({}, target, save=failing_save)
    assert target.read_bytes() == b"two"  # the old file survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # and no temp file is left
