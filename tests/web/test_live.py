"""The real server (uvicorn in a thread): WebFeedback as a FeedbackSource, `hero label`, `hero export`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner
from webutil import PROMPT, make_run

from hero.cli import app
from hero.runs.feedback_log import FeedbackLog, RoundRecorder
from hero.web import WebFeedback, export_run, label_run, pending_rounds


@contextmanager
def signed_in(url: str) -> Iterator[httpx.Client]:
    """An HTTP client that opened the printed URL (so it holds the token cookie)."""
    with httpx.Client(base_url=url.split("/?", 1)[0], timeout=10) as c:
        assert c.get(url).status_code == 303  # the token becomes a cookie, then the page without it
        yield c


def wait_phase(c: httpx.Client, phase: str, round_: int | None = None, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = c.get("/api/state").json()
        if state["phase"] == phase and (round_ is None or state["round"] == round_):
            return state
        time.sleep(0.05)
    raise AssertionError(f"never reached phase {phase} round {round_}: {state}")


def test_web_feedback_serves_a_round_and_returns_the_submission(tmp_path):
    make_run(tmp_path / "run", rounds=0)
    web = WebFeedback(tmp_path / "run", rounds_total=1, budget=4, port=0)
    url = web.start()
    assert url.startswith("http://127.0.0.1:") and "token=" in url
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    out = {}
    record = RoundRecorder(web.session.log, 0, PROMPT)
    loop = threading.Thread(target=lambda: out.update(fb=web.judge_round(0, PROMPT, images, None, record=record)),
                            daemon=True)
    loop.start()
    with signed_in(url) as c:
        assert httpx.get(url.split("/?")[0] + "/api/state").status_code == 401  # no cookie, no answer
        state = wait_phase(c, "judging", 0)
        assert state["n_images"] == 4 and c.get("/api/image/0/3").content[:4] == b"\x89PNG"
        res = c.post("/api/submit", json={"round": 0, "good": [0, 2], "best": 2})
        assert res.status_code == 200, res.text
        loop.join(5)
        assert out["fb"].good == [True, False, True, False] and out["fb"].best == 2
        assert FeedbackLog(tmp_path / "run" / "feedback.sqlite").get_round(0).best == 2  # before the answer
        closer = threading.Thread(target=web.close)
        closer.start()
        assert wait_phase(c, "done")["phase"] == "done"
        closer.join(10)
    assert not web.alive()


def test_the_token_survives_a_restart_and_a_busy_port_is_a_clear_error(tmp_path):
    first = WebFeedback(tmp_path, 1, 1, port=0)
    url = first.start()
    with pytest.raises(OSError, match="web.port"):
        WebFeedback(tmp_path, 1, 1, port=first.port).start()
    first.close(done=False)
    second = WebFeedback(tmp_path, 1, 1, port=first.port)  # same port, same token: the open page's cookie works
    assert second.start() == url
    second.close(done=False)
    assert (tmp_path / ".web-token").stat().st_mode & 0o077 == 0


def _label_in_thread(run_dir, urls: list[str]) -> threading.Thread:
    """`hero label` in a thread (its URL is appended to ``urls``); ``t.result["n"]``: rounds labelled."""
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(n=label_run(run_dir, port=0, prompt=PROMPT,
                                                                  on_ready=urls.append)), daemon=True)
    t.result = result
    t.start()
    return t


def test_label_serves_unlabelled_rounds_in_order_then_export(tmp_path):
    run = make_run(tmp_path / "run", rounds=3, n=4)
    with FeedbackLog(run.feedback_db) as log:
        log.record_round(0, PROMPT, [True, False, False, False], 0, "sim")
    assert pending_rounds(run.path) == [1, 2]
    urls: list[str] = []
    t = _label_in_thread(run.path, urls)
    deadline = time.monotonic() + 10
    while not urls:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with signed_in(urls[0]) as c:
        state = wait_phase(c, "judging", 1)
        assert state["current_best"] is True and state["mode"] == "label"  # round 0's best, offered to keep
        assert c.post("/api/submit", json={"round": 1, "good": [], "best": None}).status_code == 200
        wait_phase(c, "judging", 2)
        assert c.post("/api/submit", json={"round": 2, "good": [1, 3], "best": 3}).status_code == 200
        t.join(10)
    assert t.result["n"] == 2 and pending_rounds(run.path) == []
    result = export_run(run.path, tmp_path / "export")
    assert result["feedback"] == 12
    lines = [json.loads(x) for x in (tmp_path / "export" / "feedback.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0] * 4 + [1] * 4 + [2] * 4 and lines[-1]["best"] is True
    pairs = [json.loads(x) for x in (tmp_path / "export" / "pairs.jsonl").read_text().splitlines()]
    assert {"round": 2, "prompt": PROMPT, "winner": 3, "loser": 0, "winner_image": "rounds/round_002/images/0003.png",
            "loser_image": "rounds/round_002/images/0000.png"} in pairs
    assert len(pairs) == result["pairs"] == 3 + 0 + (3 + 2)  # best beats all; good beats not good


def test_label_and_export_commands(tmp_path):
    runner = CliRunner()
    run = make_run(tmp_path / "run", rounds=1, n=2)
    with FeedbackLog(run.feedback_db) as log:
        log.record_round(0, PROMPT, [True, False], 0, "web")
    res = runner.invoke(app, ["label", str(run.path), "--prompt", PROMPT])
    assert res.exit_code == 0 and "nothing to label" in res.output
    res = runner.invoke(app, ["export", str(run.path)])
    assert res.exit_code == 0 and "2 judgements" in res.output and "1 pairs" in res.output
    assert (run.path / "export" / "pairs.jsonl").is_file()
    assert runner.invoke(app, ["export", str(tmp_path / "nope")]).exit_code == 2
    assert runner.invoke(app, ["label", str(tmp_path / "nope")]).exit_code == 2
