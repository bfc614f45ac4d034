"""The pairwise (D3PO) web API: a good submission lands in the log as pairs, every bad one is a 4xx that changes
nothing, and the two kinds of submission are refused for rounds of the other kind."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from starlette.testclient import TestClient
from test_api import client, post
from webutil import PROMPT, WaitingRound, dump_log, submit_concurrently

from hero.runs.feedback_log import FeedbackLog, RoundRecorder
from hero.web import WebFeedback
from hero.web.server import create_app
from hero.web.session import RoundSpec

PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7))


def post_pairs(c: TestClient, payload):
    return c.post("/api/submit-pairs", content=json.dumps(payload), headers={"Content-Type": "application/json"})


@pytest.fixture
def waiting(session):
    """Round 0 (8 images in 4 noise-sharing pairs) waiting for pairwise feedback."""
    return WaitingRound(session, RoundSpec(0, PROMPT, 8, pairs=PAIRS))


def test_state_shows_the_pairs_and_a_submission_is_logged_before_the_answer(session, waiting):
    c = client(session)
    state = c.get("/api/state").json()
    assert state["kind"] == "pairs" and state["pairs"] == [list(p) for p in PAIRS] and state["n_images"] == 8
    res = post_pairs(c, {"round": 0, "winners": [[1, 0], [2, 3], [7, 6]], "ties": [[4, 5]]})
    assert res.status_code == 200, res.text
    assert res.json() == {"ok": True, "round": 0, "pairs": 3, "ties": 1, "feedback": 8}  # 8 images judged
    fb = waiting.join()
    assert fb.pairs == [(1, 0), (2, 3), (7, 6)] and fb.good == [] and fb.n_images == 8 and fb.n_feedback == 8
    stored = FeedbackLog(session.run.feedback_db).get_round(0)
    assert stored.pairs == [(1, 0), (2, 3), (7, 6)] and stored.good == [] and stored.source == "web"
    assert c.get("/api/state").json()["phase"] == "learning"


def test_all_ties_is_an_honest_answer(session, waiting):
    assert post_pairs(client(session), {"round": 0, "winners": [], "ties": [list(p) for p in PAIRS]}).status_code == 200
    assert waiting.join().pairs == [] and FeedbackLog(session.run.feedback_db).n_feedback() == 8


ALL = [[1, 0], [2, 3], [4, 5], [7, 6]]


@pytest.mark.parametrize("case, payload, status", [
    ("wrong round", {"round": 1, "winners": ALL, "ties": []}, 409),
    ("unknown pair", {"round": 0, "winners": [[1, 2], [2, 3], [4, 5], [7, 6]], "ties": []}, 422),
    ("image against itself", {"round": 0, "winners": [[0, 0], [2, 3], [4, 5], [7, 6]], "ties": []}, 422),
    ("image out of range", {"round": 0, "winners": [[8, 9], *ALL], "ties": []}, 422),
    ("negative image", {"round": 0, "winners": [[-1, 0], *ALL[1:]], "ties": []}, 422),
    ("a pair twice", {"round": 0, "winners": [*ALL, [0, 1]], "ties": []}, 422),
    ("a pair as winner and tie", {"round": 0, "winners": ALL, "ties": [[3, 2]]}, 422),
    ("a pair left unanswered", {"round": 0, "winners": ALL[:3], "ties": []}, 422),
    ("nothing answered", {"round": 0, "winners": [], "ties": []}, 422),
    ("ids as strings", {"round": 0, "winners": [["1", "0"], *ALL[1:]], "ties": []}, 400),
    ("booleans as ids", {"round": 0, "winners": [[True, False], *ALL[1:]], "ties": []}, 400),
    ("a pair of three", {"round": 0, "winners": [[1, 0, 2], *ALL[1:]], "ties": []}, 400),
    ("a pair as an object", {"round": 0, "winners": [{"winner": 1, "loser": 0}, *ALL[1:]], "ties": []}, 400),
    ("winners not a list", {"round": 0, "winners": "1>0", "ties": []}, 400),
    ("round as a string", {"round": "0", "winners": ALL, "ties": []}, 400),
    ("missing ties", {"round": 0, "winners": ALL}, 400),
    ("good/best fields", {"round": 0, "good": [1], "best": 1}, 400),
    ("unknown field", {"round": 0, "winners": ALL, "ties": [], "path": "/etc/passwd"}, 400),
    ("not an object", [0, ALL, []], 400),
])
def test_bad_pair_submissions_change_nothing(session, waiting, case, payload, status):
    before = dump_log(session.run.feedback_db)
    res = post_pairs(client(session), payload)
    assert res.status_code == status, (case, res.text)
    assert res.json()["error"]  # a message for the person
    assert dump_log(session.run.feedback_db) == before
    assert session.state()["phase"] == "judging" and waiting.result is None


def test_each_kind_of_round_refuses_the_other_kind_of_submission(session, waiting):
    before = dump_log(session.run.feedback_db)
    c = client(session)
    res = post(c, {"round": 0, "good": [1], "best": 1})
    assert res.status_code == 409 and "submit-pairs" in res.json()["error"]
    assert post_pairs(c, {"round": 0, "winners": ALL, "ties": []}).status_code == 200
    waiting.join()
    WaitingRound(session, RoundSpec(1, PROMPT, 8))  # a good/best round now
    assert post_pairs(c, {"round": 1, "winners": ALL, "ties": []}).status_code == 409
    assert client(session).get("/api/state").json()["kind"] == "good_best"
    assert dump_log(session.run.feedback_db) != before and FeedbackLog(session.run.feedback_db).rounds() == [0]


def test_guard_applies_to_the_pairs_endpoint(session, waiting):
    before = dump_log(session.run.feedback_db)
    assert post_pairs(client(session, token=None), {"round": 0, "winners": ALL, "ties": []}).status_code == 401
    c = client(session)
    assert c.post("/api/submit-pairs", content=json.dumps({"round": 0, "winners": ALL, "ties": []}),
                  headers={"Content-Type": "application/json", "Origin": "http://evil.example"}).status_code == 403
    assert c.post("/api/submit-pairs", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    assert c.get("/api/submit-pairs").status_code == 405
    assert dump_log(session.run.feedback_db) == before


def test_a_second_submission_is_refused_and_concurrent_ones_record_once(session, waiting):
    statuses = submit_concurrently(lambda: session.submit_pairs({"round": 0, "winners": ALL, "ties": []}), 6)
    assert statuses == [200] + [409] * 5
    log = FeedbackLog(session.run.feedback_db)
    assert log.rounds() == [0] and log.n_feedback() == 8


def test_web_feedback_judge_pairs_returns_the_logged_pairs(tmp_path):
    web = WebFeedback(tmp_path / "run", rounds_total=1, budget=4, port=0)
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    out: dict = {}
    record = RoundRecorder(web.session.log, 0, PROMPT)
    loop = threading.Thread(target=lambda: out.update(p=web.judge_pairs(0, PROMPT, images, [(0, 1), (2, 3)],
                                                                       record=record)), daemon=True)
    loop.start()  # starts the server itself
    try:
        c = TestClient(create_app(web.session, web.token, {"127.0.0.1"}), base_url="http://127.0.0.1:8765")
        c.cookies.set("hero_token", web.token)
        deadline = time.monotonic() + 10
        while c.get("/api/state").json()["phase"] != "judging":
            assert time.monotonic() < deadline, "the round never came up"
            time.sleep(0.02)
        assert c.get("/api/image/0/3").content[:4] == b"\x89PNG"  # the images were written where the page reads
        assert post_pairs(c, {"round": 0, "winners": [[3, 2]], "ties": [[0, 1]]}).status_code == 200
        loop.join(5)
        assert out["p"] == [(3, 2)] and FeedbackLog(tmp_path / "run" / "feedback.sqlite").get_round(0).pairs == [(3, 2)]
    finally:
        web.close(done=False)



@pytest.mark.parametrize("case, body", [
    ("round past SQLite's integers", b'{"round": 9223372036854775808, "winners": [], "ties": []}'),
    ("a winner past 2**31", b'{"round": 0, "winners": [[2147483648, 0]], "ties": []}'),
    ("a tie far below zero", b'{"round": 0, "winners": [], "ties": [[0, -9223372036854775809]]}'),
    ("a float id", b'{"round": 0, "winners": [[1.0, 0]], "ties": []}'),
    ("a duplicate key", b'{"round": 0, "winners": [], "ties": [], "ties": []}'),
    ("nested too deep", b'{"round": 0, "winners": [[[[[[[[[1]]]]]]]]], "ties": []}'),
])
def test_out_of_range_and_malformed_pair_bodies_are_400(session, waiting, case, body):
    before = dump_log(session.run.feedback_db)
    res = client(session).post("/api/submit-pairs", content=body, headers={"Content-Type": "application/json"})
    assert res.status_code == 400 and res.json()["error"], (case, res.text)
    assert dump_log(session.run.feedback_db) == before and waiting.result is None
