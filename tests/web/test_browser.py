"""End to end in headless Chromium: a person runs two HERO rounds on the built-in model through the real page.

Needs Debian's ``chromium`` (``make test`` installs it) and Playwright's Python client (the test extra); the
browser is the system one (``executable_path``), never a downloaded one.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hero.runs.feedback_log import FeedbackLog

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("HERO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
FAST = ["sampler.steps=4", "hero.encoder_epochs=3", "pg.timesteps_per_traj=2"]
SCREENSHOT = os.environ.get("HERO_WEB_SCREENSHOT")  # a path: also save the first round's screenshot there


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
