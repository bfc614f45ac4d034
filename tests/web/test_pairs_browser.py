"""End to end in headless Chromium: a person judges two D3PO rounds on the built-in model in the page's pairwise
mode (click, keys, undo, no preference, a refresh mid-round), and the rounds land in the log as pairs.

Same setup as test_browser.py (Debian's chromium through Playwright's Python client; skipped without them).
"""

from __future__ import annotations

import json

import pytest
import test_browser
from test_browser import Trainer, free_port

from hero.runs.feedback_log import FeedbackLog

pytestmark = pytest.mark.slow
browser, page = test_browser.browser, test_browser.page  # the fixtures (Chromium, a laptop-sized page), reused


def d3po_args(out, port: int) -> list[str]:
    args = ["--prompt", "two red squares", "--algo", "d3po", "--feedback", "web", "--budget", "8",
            "--images-per-round", "4", "--out", str(out), "--set", f"web.port={port}"]
    return args + [a for s in ("sampler.steps=4", "pg.timesteps_per_traj=2") for a in ("--set", s)]


def wait_pairs_round(page, number: int) -> None:
    page.locator("#progress", has_text=f"Round {number} of 2").wait_for()
    page.locator("#judge").wait_for(state="visible")
    page.locator('#grid .pair[data-p="1"] .tile[data-i="3"]').wait_for(state="visible")


def choices(page) -> list:
    """Per pair: the winning image index, "tie", or None."""
    return page.eval_on_selector_all(
        "#grid .pair", "cards => cards.map(c => c.classList.contains('tie') ? 'tie' : "
                       "(c.querySelector('.tile.win') ? Number(c.querySelector('.tile.win').dataset.i) : null))")


def test_two_d3po_rounds_judged_in_pairs(tmp_path, page):
    out = tmp_path / "run"
    trainer = Trainer(d3po_args(out, free_port()))
    page.goto(trainer.url)
    wait_pairs_round(page, 1)
    assert page.locator("#grid .pair").count() == 2 and page.locator("#grid .tile").count() == 4
    assert page.locator(".keys.pairs-only").is_visible() and not page.locator(".keys.marks-only").is_visible()
    page.locator('#grid .pair[data-p="0"] .tile[data-i="0"]').click()  # pair 1: the left image is better
    page.keyboard.press("ArrowRight")  # the focus moved on to pair 2: its right image
    assert choices(page) == [0, 3]
    page.keyboard.press("u")  # undo that
    assert choices(page) == [0, None]
    page.keyboard.press("Enter")  # pair 2 unanswered: refused in the page, nothing sent
    assert "Pair 2 has no answer" in page.locator("#message").inner_text()
    page.keyboard.press("0")  # no preference
    assert choices(page) == [0, "tie"]
    assert page.locator("#count-good").inner_text() == "2 of 2 pairs answered"
    assert page.locator("#count-best").inner_text() == "4 of 4 images judged"
    page.keyboard.press("Enter")

    wait_pairs_round(page, 2)  # learned, and the next round came by itself
    assert choices(page) == [None, None]
    page.keyboard.press("2")  # pair 1: right
    page.locator('#grid .pair[data-p="1"] .tile[data-i="2"]').click()  # pair 2: left
    page.reload()  # the choices survive a refresh
    wait_pairs_round(page, 2)
    assert choices(page) == [1, 2]
    page.keyboard.press("Enter")
    page.locator("#done").wait_for(state="visible")
    assert trainer.wait() == 0, "".join(trainer.output)

    log = FeedbackLog(out / "feedback.sqlite")
    assert log.rounds() == [0, 1] and log.n_feedback() == 8  # one image judged = one feedback, ties included
    r0, r1 = log.get_round(0), log.get_round(1)
    assert r0.pairs == [(0, 1)] and r0.good == [] and r0.source == "web"
    assert r1.pairs == [(1, 0), (2, 3)]
    assert [json.loads(m)["pairs"] for m in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "lora").is_dir()

