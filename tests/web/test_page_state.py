"""What the page tells the person: rounds numbered from 1 in every message, and the measured learning time."""

from __future__ import annotations

import time

import pytest
from webutil import PROMPT, WaitingRound, best_spec

from hero.web.session import RoundSpec, SubmitError


def error_of(submit) -> str:
    with pytest.raises(SubmitError) as e:
        submit()
    return str(e.value)


def test_refusals_number_rounds_as_the_page_does(session):
    waiting = WaitingRound(session, RoundSpec(0, PROMPT, 8))
    assert session.state()["round_number"] == 1
    wrong = error_of(lambda: session.submit({"round": 1, "good": [0], "best": 0}))
    assert "round 2 is not the round waiting for feedback (round 1 is)" in wrong
    session.submit({"round": 0, "good": [0], "best": 0})
    waiting.join()
    again = error_of(lambda: session.submit({"round": 0, "good": [1], "best": 1}))  # a second tab showing Round 1
    assert "round 1 was already submitted" in again and "round 0" not in again


def test_image_ids_in_messages_also_name_the_page_number(session):
    WaitingRound(session, RoundSpec(0, PROMPT, 8))
    assert "images 1..8 on the page" in error_of(lambda: session.submit({"round": 0, "good": [8], "best": 0}))
    assert "image 4 on the page" in error_of(lambda: session.submit({"round": 0, "good": [1], "best": 3}))


def test_state_carries_the_measured_learning_time(session):
    first = session.state()
    assert first["phase"] == "learning" and first["learning_s"] >= 0 and first["last_learning_s"] is None
    waiting = WaitingRound(session, RoundSpec(0, PROMPT, 8))
    assert session.state()["learning_s"] is None  # judging: nothing to time
    session.submit({"round": 0, "good": [2], "best": 2})
    waiting.join()
    time.sleep(0.4)  # the model "learns"
    learning = session.state()
    assert learning["phase"] == "learning" and learning["learning_s"] >= 0.4
    assert learning["last_learning_s"] is None  # no learning phase has ended yet: the page says so
    waiting = WaitingRound(session, best_spec(session.run))
    assert 0.4 <= session.state()["last_learning_s"] < 5  # committed -> the next round up
    session.submit({"round": 1, "good": [], "best": None})
    waiting.join()
    after = session.state()
    assert after["learning_s"] < 0.4 and after["last_learning_s"] >= 0.4  # a new phase, timed from its commit
