"""End to end in headless Chromium: a person runs two HERO rounds on the built-in model through the real page.

Also, against the real server in this process (rounds of random images, no model): the number keys on a
16-image round, the learning state's measured time, and a second tab's refusal, numbered as the page numbers.

Needs Debian's ``chromium`` (``make test`` installs it) and Playwright's Python client (the test extra); the
browser is the system one (``executable_path``), never a downloaded one.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hero.runs.feedback_log import FeedbackLog, RoundRecorder
from hero.web import WebFeedback

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("HERO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# HERO's default update is the likelihood one: a few short steps, not 300 of 16.
FAST = ["sampler.steps=4", "hero.encoder_epochs=3", "pg.timesteps_per_traj=2",
        "likelihood.steps_per_round=3", "likelihood.batch_size=4"]
SCREENSHOT = os.environ.get("HERO_WEB_SCREENSHOT")  # a path: also save the first round's screenshot there
SHOTS = os.environ.get("HERO_WEB_SHOTS")  # a folder: also save the pending-digit and learning states there


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set HERO_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1366, "height": 768})  # a laptop screen
    pg = context.new_page()
    pg.set_default_timeout(120_000)  # a round's learning on a busy 2-core machine
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Trainer:
    """`hero train --feedback web` as a subprocess; ``url`` is the line it prints before the first round."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "hero.cli", "train", *args, "--no-progress"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_url()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def _wait_url(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.output)
                continue
            if line.startswith("feedback page: "):
                return line.split()[2]
        raise AssertionError("no URL printed:\n" + "".join(self.output))

    def wait(self, timeout: float = 180) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_args(out: Path, port: int) -> list[str]:
    args = ["--prompt", "two red squares", "--feedback", "web", "--budget", "16", "--images-per-round", "8",
            "--out", str(out), "--set", f"web.port={port}"]
    return args + [a for s in FAST for a in ("--set", s)]


def tile(page, i: int):
    return page.locator(f'#grid .tile[data-i="{i}"]')


def wait_round(page, number: int) -> None:
    page.locator("#progress", has_text=f"Round {number} of 2").wait_for()
    page.locator("#judge").wait_for(state="visible")
    tile(page, 7).wait_for(state="visible")


def good_and_best(page) -> tuple[set[int], set[int]]:
    classes = page.eval_on_selector_all("#grid .tile", "els => els.map(e => [Number(e.dataset.i), e.className])")
    return ({i for i, c in classes if " good" in c}, {i for i, c in classes if " best" in c})


def test_two_hero_rounds_in_the_browser(tmp_path, page):
    out = tmp_path / "run"
    trainer = Trainer(start_args(out, free_port()))
    page.goto(trainer.url)
    assert "token=" not in page.url  # the token became a cookie and left the address bar
    wait_round(page, 1)
    assert page.locator("#prompt").inner_text() == "two red squares"
    assert page.locator("#grid .tile.keep").count() == 0  # round 1 has no current best yet
    tile(page, 0).click()
    tile(page, 2).click()
    tile(page, 2).click(modifiers=["Shift"])  # the best (already good)
    page.keyboard.press("5")  # image 5 (index 4) good, by number key
    page.keyboard.press("6")
    page.keyboard.press("u")  # undo the 6
    assert good_and_best(page) == ({0, 2, 4}, {2})
    assert page.locator("#count-best").inner_text() == "best: #3"
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT)
    page.keyboard.press("Enter")

    wait_round(page, 2)  # the "learning" state came and went by itself
    assert page.locator("#grid .tile.keep").count() == 1  # round 1's best, offered to keep
    assert good_and_best(page) == (set(), set())
    page.keyboard.press("Enter")  # no best yet: refused in the page, nothing sent
    assert "best" in page.locator("#message").inner_text()
    for key in ("2", "7", "Shift+Digit7"):  # keyboard alone: good 2 and 7, then 7 is the best
        page.keyboard.press(key)
    assert good_and_best(page) == ({1, 6}, {6})
    page.keyboard.press("Enter")
    page.locator("#done").wait_for(state="visible")
    assert trainer.wait() == 0, "".join(trainer.output)

    log = FeedbackLog(out / "feedback.sqlite")
    assert log.rounds() == [0, 1] and log.n_feedback() == 16
    r0, r1 = log.get_round(0), log.get_round(1)
    assert [i for i, g in enumerate(r0.good) if g] == [0, 2, 4] and r0.best == 2 and r0.source == "web"
    assert [i for i, g in enumerate(r1.good) if g] == [1, 6] and r1.best == 6
    assert (out / "lora").is_dir()


def test_killed_server_resumes_where_the_person_was(tmp_path, page):
    out, port = tmp_path / "run", free_port()
    trainer = Trainer(start_args(out, port))
    page.goto(trainer.url)
    wait_round(page, 1)
    tile(page, 1).click()
    tile(page, 3).click(modifiers=["Shift"])  # best, and so good
    assert good_and_best(page) == ({1, 3}, {3})
    trainer.kill()  # mid-round: nothing submitted yet
    page.locator("#offline").wait_for(state="visible")
    assert not (out / "feedback.sqlite").exists() or FeedbackLog(out / "feedback.sqlite").rounds() == []

    resumed = Trainer(["--resume", str(out)])
    assert resumed.url == trainer.url  # same port, same token: the open tab's cookie still works
    page.locator("#offline").wait_for(state="hidden")  # the open page reconnected by itself
    wait_round(page, 1)
    assert good_and_best(page) == ({1, 3}, {3})  # the marks are where the person left them
    page.reload()  # and a refresh keeps them too
    wait_round(page, 1)
    assert good_and_best(page) == ({1, 3}, {3})
    page.keyboard.press("Enter")
    wait_round(page, 2)
    page.keyboard.press("k")  # keep the current best
    page.keyboard.press("8")
    page.keyboard.press("Enter")
    page.locator("#done").wait_for(state="visible")
    assert resumed.wait() == 0, "".join(resumed.output)
    log = FeedbackLog(out / "feedback.sqlite")
    assert log.rounds() == [0, 1] and log.n_feedback() == 16
    assert log.get_round(0).best == 3 and log.get_round(1).best is None
    assert [i for i, g in enumerate(log.get_round(1).good) if g] == [7]


def test_a_prompt_set_round_groups_images_by_prompt_and_resumes_after_sigkill(tmp_path, page):
    out, port = tmp_path / "run", free_port()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('two red squares\n{"prompt": "one blue circle", "hidden_background": "black"}\n')
    args = ["--prompts", str(prompts), "--feedback", "web", "--budget", "16", "--images-per-round", "8", "--out",
            str(out), "--set", f"web.port={port}"] + [a for s in FAST for a in ("--set", s)]
    trainer = Trainer(args)
    page.goto(trainer.url)
    wait_round(page, 1)
    heads = page.locator("#grid .group-head")
    assert heads.all_inner_texts() == ["two red squares", "one blue circle"]  # each group under its prompt
    # The keystrokes of a one-prompt round: a number per good image, Shift on the one that is best, then Enter.
    # Here the same keys give a best per prompt: Shift+2 is the best of images 1-4, Shift+7 of images 5-8.
    keys = ["1", "Shift+Digit2", "6", "Shift+Digit7"]
    for key in keys:
        page.keyboard.press(key)
    assert good_and_best(page) == ({0, 1, 5, 6}, {1, 6})
    assert page.locator("#count-best").inner_text() == "bests: 2 of 2 prompts"
    shot(page, "prompt-set.png")
    trainer.kill()  # mid-round: nothing submitted yet
    page.locator("#offline").wait_for(state="visible")

    resumed = Trainer(["--resume", str(out)])
    page.locator("#offline").wait_for(state="hidden")
    wait_round(page, 1)
    assert good_and_best(page) == ({0, 1, 5, 6}, {1, 6})  # the marks are where the person left them
    page.keyboard.press("Enter")  # len(keys) + 1 keystrokes for the round, as for one prompt with 4 good images

    wait_round(page, 2)
    assert page.locator("#grid .tile.keep").count() == 2  # each prompt's current best, offered to keep
    page.keyboard.press("Shift+Digit3")  # a new best for "two red squares"
    page.keyboard.press("Enter")  # "one blue circle" has no best chosen: refused in the page, nothing sent
    assert "one blue circle" in page.locator("#message").inner_text()
    page.keyboard.press("8")  # focus moves into the second group...
    page.keyboard.press("k")  # ...whose current best K keeps
    page.keyboard.press("Enter")
    page.locator("#done").wait_for(state="visible")
    assert resumed.wait() == 0, "".join(resumed.output)

    log = FeedbackLog(out / "feedback.sqlite")
    r0, r1 = log.get_round(0), log.get_round(1)
    assert r0.prompts == ["two red squares"] * 4 + ["one blue circle"] * 4 and r0.bests == (1, 6)
    assert [i for i, g in enumerate(r0.good) if g] == [0, 1, 5, 6] and r0.source == "web"
    assert r1.bests == (2,) and [i for i, g in enumerate(r1.good) if g] == [2, 7]


class Loop:
    """WebFeedback in this process, with a stand-in for the training loop: ``rounds`` rounds of ``n`` random
    images; between rounds it "learns" until the test sets ``next_round``."""

    def __init__(self, run_dir: Path, n: int, rounds: int) -> None:
        self.web = WebFeedback(run_dir, rounds_total=rounds, budget=n * rounds, port=0)
        self.url = self.web.start()
        self.n, self.rounds = n, rounds
        self.next_round = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        best = None
        for r in range(self.rounds):
            images = rng.integers(0, 256, (self.n, 16, 16, 3), dtype=np.uint8)
            try:
                fb = self.web.judge_round(r, "two red squares", images, best,
                                          record=RoundRecorder(self.web.session.log, r, "two red squares"))
            except RuntimeError:  # the server was closed mid-round: a test failed, it says why
                return
            best = images[fb.best] if fb.best is not None else best
            self.next_round.wait()
            self.next_round.clear()
        self.web.session.finish()

    def close(self) -> None:
        self.next_round.set()
        self.thread.join(10)
        self.web.close(done=False)


@pytest.fixture
def loop16(tmp_path):
    loop = Loop(tmp_path / "run", n=16, rounds=1)
    yield loop
    loop.close()


def record_pending(page) -> None:
    """Collect every text the pending-digit box shows (``window.pendingSeen``): the box lives 0.8 s, so the
    test reads the record afterwards instead of racing it."""
    page.evaluate("""() => {
        window.pendingSeen = [];
        const box = document.getElementById("pending");
        new MutationObserver(() => { if (!box.hidden) window.pendingSeen.push(box.textContent.replace(/\\s+/g, " ")); })
            .observe(box, { attributes: true, childList: true, subtree: true, characterData: true });
    }""")


def pending_seen(page) -> list[str]:
    return page.evaluate("() => window.pendingSeen.splice(0)")


def test_number_keys_on_a_16_image_round(loop16, page):
    page.goto(loop16.url)
    page.locator("#judge").wait_for(state="visible")
    tile(page, 15).wait_for(state="visible")
    help_line = page.locator(".keys.marks-only").inner_text()  # states the rule for this n
    assert "number (1 waits 0.8 s for a 2nd digit: 1 2 → 12): good" in help_line
    if SHOTS:
        page.keyboard.press("1")
        shot(page, "pending-digit.png")
        page.keyboard.press("Escape")
    record_pending(page)

    page.keyboard.press("1")  # "1" may begin 10..16: it waits, on screen
    page.keyboard.press("2")  # within the wait: image 12
    assert good_and_best(page) == ({11}, set())
    assert any("image 1, or type a second digit for 10–16" in t for t in pending_seen(page))
    assert page.locator("#pending").is_hidden()

    page.keyboard.press("3")  # no image 30..39: at once, no wait
    assert good_and_best(page) == ({11, 2}, set()) and pending_seen(page) == []

    page.keyboard.press("1")
    page.keyboard.press("7")  # there is no image 17: "1" stands alone, then 7 (which cannot wait) at once
    assert good_and_best(page) == ({11, 2, 0, 6}, set())

    page.keyboard.press("1")  # alone: after the wait it toggles image 1 (off again)
    page.wait_for_function("() => !document.querySelector('#grid .tile[data-i=\"0\"]').classList.contains('good')")
    assert page.locator("#pending").is_hidden() and good_and_best(page) == ({11, 2, 6}, set())

    page.keyboard.press("Shift+Digit1")
    page.keyboard.press("2")  # Shift on the first digit: image 12 is the best
    assert good_and_best(page) == ({11, 2, 6}, {11})
    assert any("1best: image 1, or type a second digit for 10–16" in t for t in pending_seen(page))

    page.keyboard.press("1")
    page.keyboard.press("Escape")  # drops the waiting digit
    page.wait_for_timeout(1000)
    assert good_and_best(page) == ({11, 2, 6}, {11}) and "dropped" in page.locator("#message").inner_text()

    page.keyboard.press("0")
    assert "no image 0" in page.locator("#message").inner_text()

    page.keyboard.press("1")
    page.keyboard.press("Enter")  # the waiting "1" is applied first, then the round is submitted
    page.locator("#busy").wait_for(state="visible")
    stored = FeedbackLog(loop16.web.session.run.feedback_db).get_round(0)
    assert [i for i, g in enumerate(stored.good) if g] == [0, 2, 6, 11] and stored.best == 11


@pytest.fixture
def loop8(tmp_path):
    loop = Loop(tmp_path / "run", n=8, rounds=2)
    yield loop
    loop.close()


def test_learning_shows_the_measured_time_and_a_second_tab_numbers_rounds_from_1(loop8, page):
    page.goto(loop8.url)
    wait_round(page, 1)
    other = page.context.new_page()  # a second tab on the same round
    other.goto(loop8.url)
    wait_round(other, 1)
    other.route("**/api/state", lambda route: route.abort())  # it has not noticed the first tab's submission yet

    tile(page, 0).click(modifiers=["Shift"])
    page.keyboard.press("Enter")
    page.locator("#busy-time", has_text="No estimate yet").wait_for()  # the first learning phase: said plainly
    assert "no measured time to go by" in page.locator("#busy-time").inner_text()
    shot(page, "learning-first.png")

    tile(other, 1).click(modifiers=["Shift"])
    other.keyboard.press("Enter")
    refusal = other.locator("#message", has_text="already submitted")
    refusal.wait_for()
    assert refusal.inner_text() == "Round 1 was already submitted; it is not counted twice."
    assert other.locator("#progress").inner_text().startswith("Round 1 of 2")
    other.close()

    time.sleep(1.5)  # the model learns for 1.5 s
    loop8.next_round.set()
    wait_round(page, 2)
    page.keyboard.press("k")
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    page.locator("#busy-time", has_text="Last round").wait_for()
    timing = page.locator("#busy-time").inner_text()
    assert re.match(r"Last round, the next images were ready \d s after the submission", timing), timing
    shot(page, "learning-timed.png")
    page.locator("#busy-time", has_text="this one is taking longer").wait_for()  # once past the last round's time
    loop8.next_round.set()
    page.locator("#done").wait_for(state="visible")


def shot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / name))
