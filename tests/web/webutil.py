"""Helpers of the web tests: a fake run folder with sampled rounds, a round waiting in a thread, log dumps."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from hero.runs.feedback_log import RoundRecorder
from hero.runs.folder import RunFolder
from hero.web.server import WebFeedback, png_bytes
from hero.web.session import RoundSpec, Session, SubmitError

PROMPT = "two red squares"


def make_run(path: Path, rounds: int = 2, n: int = 8, seed: int = 0) -> RunFolder:
    """A run folder holding ``rounds`` sampled rounds of ``n`` random 16×16 images."""
    run = RunFolder(path)
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        for i in range(n):
            run.image_path(r, i).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(run.image_path(r, i))
    return run


def dump_log(db: Path) -> str:
    """Every row of the feedback log, as SQL text (so "unchanged" means byte for byte)."""
    if not db.exists():
        return ""
    with sqlite3.connect(db) as con:
        return "\n".join(con.iterdump())


class WaitingRound:
    """Runs ``session.wait_for_feedback(spec, record)`` in a thread, as the training loop does (with its writer
    of the round, ``RoundRecorder``)."""

    def __init__(self, session: Session, spec: RoundSpec) -> None:
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(session, spec), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 5
        while session.state()["round"] != spec.round:
            assert time.monotonic() < deadline, "the round never became visible"
            time.sleep(0.01)

    def _run(self, session: Session, spec: RoundSpec) -> None:
        self.result = session.wait_for_feedback(spec, RoundRecorder(session.log, spec.round, spec.prompt))

    def join(self, timeout: float = 5.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the loop was not woken by the submission"
        return self.result


def best_spec(run: RunFolder, r: int = 1) -> RoundSpec:
    """Round ``r`` with a current best (round 0's image 0) beside it."""
    best = np.asarray(Image.open(run.image_path(0, 0)).convert("RGB"))
    return RoundSpec(r, PROMPT, 8, png_bytes(best))


def submit_concurrently(submit, n: int) -> list[int]:
    """Call ``submit()`` from ``n`` threads at once; the sorted HTTP statuses (200, or the SubmitError's)."""
    results: list[int] = []

    def one() -> None:
        try:
            submit()
            results.append(200)
        except SubmitError as e:
            results.append(e.status)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


@contextmanager
def waiting_server(run_dir: Path) -> Iterator[WebFeedback]:
    """A started server (port 0) on a fresh run folder, with its round 0 (8 images, no current best) waiting."""
    make_run(run_dir, rounds=1)
    web = WebFeedback(run_dir, rounds_total=1, budget=8, port=0)
    web.start()
    WaitingRound(web.session, RoundSpec(0, PROMPT, 8))
    try:
        yield web
    finally:
        web.close(done=False)
