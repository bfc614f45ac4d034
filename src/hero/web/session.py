"""The state the web page and the training loop share: which round waits for feedback, and its submission.

Rules a submission must follow (checked here, on the server, and again in the page before it sends):

* it answers the round that is waiting now (else 409), and that round is not in the feedback log yet (else 409:
  a second submission is refused, never double-counted);
* ``good`` lists distinct image indices of this round (else 422: unknown image id);
* exactly one best: an image index that is among the good ones (the best is always good), or ``null`` for
  "keep the current best", which only exists after a round has chosen one (so the first round must point at an
  image).
* a prompt-set round (its images grouped by prompt) sends ``bests`` instead of ``best``: one entry per prompt
  group, in order, each an image of that group that is marked good, or ``null`` to keep that prompt's current
  best (only where it has one).

Messages are for the person, who sees rounds and images numbered from 1 (the JSON's round 0 is "round 1", image
id 0 is "image 1"); a message that names an id says both.

What is *not* enforced, on purpose: "at least one good and one not good". HERO's anchor is the best image, so
the first round's required best already gives it one good image; after that a round with no good image (the
person keeps the current best) or with only good images is an honest answer that HERO handles (the triplet loss
simply has no pair in that round, and the good-noise set of the previous round is kept). Forcing a different
answer would record a judgement the person did not make, so the page warns and asks for a second Enter instead.

A pairwise round (D3PO: ``RoundSpec.pairs`` set) is answered through ``submit_pairs`` instead, with the rules
of ``hero.web.pairs``; each kind of submission is refused (409) for a round of the other kind.

A valid submission is committed to the run's SQLite feedback log *before* the HTTP answer is sent, through the
round loop's writer of that round (the ``record`` the loop handed to ``wait_for_feedback``: the session reads the
log but never writes it); anything rejected leaves the log untouched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hero.feedback.base import Record, RoundFeedback
from hero.runs.feedback_log import DuplicateRound, FeedbackLog, InvalidFeedback
from hero.runs.folder import RunFolder
from hero.web.pairs import SubmitError, check_pairs, is_json_int, parse_pairs_submission

__all__ = ["Phase", "RoundSpec", "Session", "SubmitError"]

Phase = str  # "learning" (the model is busy: sampling or updating) | "judging" | "done"
_FIELDS = {"round", "good", "best"}
_SET_FIELDS = {"round", "good", "bests"}  # a prompt-set round: a best per prompt group


@dataclass(frozen=True)
class RoundSpec:
    """A round shown to the person: its index, prompt, image count and whether a current best exists."""

    round: int
    prompt: str
    n_images: int
    best_png: bytes | None = None  # the current best image (an earlier round's), PNG-encoded
    pairs: tuple[tuple[int, int], ...] | None = None  # a pairwise round (D3PO): the (i, j) pairs to compare
    groups: tuple[tuple[str, int, int], ...] | None = None  # a prompt-set round: (prompt, first, end) per group
    group_best_pngs: tuple[bytes | None, ...] | None = None  # ... and each group's current best (PNG) if any

    def image_prompts(self) -> list[str]:
        """Each image's prompt (a prompt-set round)."""
        return [p for p, lo, hi in self.groups for _ in range(lo, hi)]



def parse_submission(payload: Any) -> tuple[int, list[int], int | None | list[int | None]]:
    """(round, good indices, best) from the request's JSON, or SubmitError 400 when it is malformed; a prompt-set
    round's ``bests`` (a list, one entry per prompt group) comes back in place of ``best``."""
    if not isinstance(payload, dict):
        raise SubmitError(400, "the body must be a JSON object {round, good, best}")
    fields = _SET_FIELDS if "bests" in payload else _FIELDS
    if set(payload) != fields:
        extra, missing = sorted(set(payload) - fields), sorted(fields - set(payload))
        names = "round, good, bests" if fields is _SET_FIELDS else "round, good, best"
        raise SubmitError(400, f"expected exactly the fields {names} (missing: {missing}, unknown: {extra})")
    rnd, good = payload["round"], payload["good"]
    if not is_json_int(rnd):
        raise SubmitError(400, f"round must be an integer (|round| < 2**31), got {str(rnd)[:40]}")
    if not isinstance(good, list) or not all(is_json_int(i) for i in good):
        raise SubmitError(400, "good must be a list of image indices (integers, |id| < 2**31)")
    if fields is _SET_FIELDS:
        bests = payload["bests"]
        if not isinstance(bests, list) or not all(b is None or is_json_int(b) for b in bests):
            raise SubmitError(400, "bests must be a list with one image index (or null) per prompt group")
        return rnd, good, bests
    best = payload["best"]
    if best is not None and not is_json_int(best):
        raise SubmitError(400, f"best must be an image index (integer, |id| < 2**31) or null, got {str(best)[:40]}")
    return rnd, good, best


def _already_submitted(rnd: int) -> str:
    """The 409 text for a round already in the log (e.g. from a second tab), numbered as the page numbers it."""
    return f"round {rnd + 1} was already submitted; it is not counted twice"


class Session:
    """Thread-safe meeting point: the loop posts a round and waits; the server validates and records answers."""

    def __init__(self, run_dir: str | Path, rounds_total: int, budget: int, mode: str = "train",
                 source: str = "web", prompt: str = "") -> None:
        """Share the run folder's feedback log; ``mode`` is "train" (a model learns between rounds) or "label"."""
        self.run = RunFolder(run_dir)
        self.log = FeedbackLog(self.run.feedback_db)
        self.rounds_total, self.budget, self.mode, self.source = rounds_total, budget, mode, source
        self.prompt = prompt  # shown while no round is up
        self._cond = threading.Condition(threading.Lock())
        self._spec: RoundSpec | None = None
        self._answer: RoundFeedback | None = None
        self._record: Record | None = None  # the loop's writer of the waiting round
        self.phase: Phase = "learning"
        self.message = "The round appears here by itself as soon as its images are ready."
        # Timing of the learning phase (a submission committed -> the next round up), so the page can say how long
        # the wait was last time. A resumed run starts without a measurement: the page says so.
        self._learning_since = time.monotonic()  # when the current learning phase began
        self._committed_at: float | None = None  # when the last submission was committed (None: not timed)
        self.last_learning_s: float | None = None  # the measured seconds of the last learning phase
        self.done_seen = threading.Event()  # a page has been told "done" (so the server may stop)

    # -- the loop's side -------------------------------------------------------------------------------------

    def wait_for_feedback(self, spec: RoundSpec, record: Record, alive: Callable[[], bool] = lambda: True,
                          poll: float = 0.5) -> RoundFeedback:
        """Show ``spec`` and block until it is submitted and committed with ``record`` (the loop's writer of the
        round, ``hero.runs.RoundRecorder``); ``alive()`` False aborts."""
        with self._cond:
            if self._committed_at is not None:
                self.last_learning_s = round(time.monotonic() - self._committed_at, 1)
                self._committed_at = None
            self._spec, self._answer, self._record, self.phase = spec, None, record, "judging"
            self.message = ""
            self._cond.notify_all()
            while self._answer is None:
                if not alive():
                    raise RuntimeError("the feedback web server stopped while a round was waiting")
                self._cond.wait(timeout=poll)  # a timeout, so Ctrl-C and a dead server are noticed
            answer, self._answer = self._answer, None
            return answer

    def finish(self, message: str = "All rounds are judged. Thank you!") -> None:
        """No more rounds: the page shows ``message``."""
        with self._cond:
            self._spec, self.phase, self.message = None, "done", message
            self._cond.notify_all()

    # -- the server's side ------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The page's view: phase, round, prompt, image ids, progress, and the learning phase's timing."""
        with self._cond:
            spec, phase, message = self._spec, self.phase, self.message
            learning_s = round(time.monotonic() - self._learning_since, 1) if phase == "learning" else None
            last_learning_s = self.last_learning_s
        n_feedback = self.log.n_feedback()
        rounds_done = len(self.log.rounds())
        number = (spec.round + 1) if spec else max(1, min(rounds_done, self.rounds_total))
        out: dict[str, Any] = {
            "phase": phase, "mode": self.mode, "message": message, "round": spec.round if spec else None,
            "round_number": number, "rounds_total": self.rounds_total, "feedback": n_feedback,
            "budget": self.budget, "progress": f"round {number} of {self.rounds_total}, "
                                                f"{n_feedback} of {self.budget} feedback",
            "prompt": spec.prompt if spec else self.prompt, "n_images": spec.n_images if spec else 0,
            "image_ids": list(range(spec.n_images)) if spec else [],
            "current_best": bool(spec and spec.best_png is not None),
            "kind": "pairs" if spec and spec.pairs is not None else "good_best",
            "pairs": [list(p) for p in spec.pairs] if spec and spec.pairs is not None else [],
            "groups": [{"prompt": p, "ids": list(range(lo, hi)), "current_best": spec.group_best_pngs[g] is not None}
                       for g, (p, lo, hi) in enumerate(spec.groups)] if spec and spec.groups else [],
            "learning_s": learning_s, "last_learning_s": last_learning_s,
        }
        if phase == "done":
            self.done_seen.set()
        return out

    def image_path(self, rnd: int, index: int) -> Path | None:
        """The file of image ``index`` of the waiting round, or None: built from two checked ints, never a path."""
        with self._cond:
            spec = self._spec
        if spec is None or rnd != spec.round or not 0 <= index < spec.n_images:
            return None
        path = self.run.image_path(rnd, index)
        return path if path.is_file() else None

    def best_png(self, rnd: int, group: int = 0) -> bytes | None:
        """The current best image shown beside round ``rnd`` (a prompt-set round: beside its group ``group``), or
        None."""
        with self._cond:
            spec = self._spec
        if spec is None or spec.round != rnd:
            return None
        if spec.groups is None:
            return spec.best_png if group == 0 else None
        return spec.group_best_pngs[group] if group < len(spec.groups) else None

    def submit(self, payload: Any) -> dict[str, Any]:
        """Validate, commit to the log, wake the loop; SubmitError (nothing written) when anything is wrong."""
        rnd, good_ids, best = parse_submission(payload)
        with self._cond:  # one submission at a time: the check and the write cannot interleave
            spec = self._waiting(rnd, pairwise=False)
            if (spec.groups is not None) != isinstance(best, list):
                raise SubmitError(422, f"round {rnd + 1} has " + (
                    f"{len(spec.groups)} prompts: send bests, one per prompt" if spec.groups is not None else
                    "one prompt: send best, not bests"))
            if spec.groups is None:
                good = self._check_rules(spec, good_ids, best)
                answer = RoundFeedback(good=good, best=best, source=self.source)
            else:
                good = self._check_group_rules(spec, good_ids, best)
                answer = RoundFeedback(good=good, best=None, source=self.source, prompts=spec.image_prompts(),
                                       bests=tuple(b for b in best if b is not None))
            self._commit(rnd, answer)
        return {"ok": True, "round": rnd, "good": sum(good), "feedback": self.log.n_feedback()}

    def submit_pairs(self, payload: Any) -> dict[str, Any]:
        """The pairwise counterpart of ``submit``: (winner, loser) per pair or a tie (rules: hero.web.pairs)."""
        rnd, winners, ties = parse_pairs_submission(payload)
        with self._cond:
            spec = self._waiting(rnd, pairwise=True)
            pairs = check_pairs(spec.pairs, winners, ties)
            self._commit(rnd, RoundFeedback(good=[], best=None, source=self.source, pairs=pairs,
                                            n_images=spec.n_images))
        return {"ok": True, "round": rnd, "pairs": len(pairs), "ties": len(ties), "feedback": self.log.n_feedback()}

    def _waiting(self, rnd: int, pairwise: bool) -> RoundSpec:
        """The waiting round if ``rnd`` is it, unanswered and of the submission's kind; else SubmitError 409."""
        spec = self._spec
        if self.log.get_round(rnd) is not None:
            raise SubmitError(409, _already_submitted(rnd))
        if self.phase != "judging" or spec is None:
            raise SubmitError(409, "no round is waiting for feedback right now"
                                   + (" (the model is learning)" if self.phase == "learning" else ""))
        if rnd != spec.round:
            raise SubmitError(409, f"round {rnd + 1} is not the round waiting for feedback "
                                   f"(round {spec.round + 1} is)")
        if (spec.pairs is not None) != pairwise:
            raise SubmitError(409, f"round {rnd + 1} asks " + ("which image of each pair is better "
                                                               "(POST /api/submit-pairs)" if spec.pairs is not None
                                                               else "for good/best marks (POST /api/submit)"))
        return spec

    def _commit(self, rnd: int, answer: RoundFeedback) -> None:
        """Record ``answer`` with the loop's writer (committed on return), then hand it to the waiting loop."""
        try:
            self._record(answer)
        except DuplicateRound:  # e.g. recorded by `hero label` in another process meanwhile
            raise SubmitError(409, _already_submitted(rnd)) from None
        except InvalidFeedback as e:  # the log numbers rounds from 0; the person reads them from 1
            raise SubmitError(422, f"round {rnd + 1}: {str(e).removeprefix(f'round {rnd}: ')}") from None
        self._answer, self._record = answer, None
        self._spec, self.phase = None, "learning"
        self._committed_at = self._learning_since = time.monotonic()
        self.message = (f"Round {rnd + 1} is saved. The model is learning from it; the next round appears "
                        "here by itself." if self.mode == "train" else f"Round {rnd + 1} is saved.")
        self._cond.notify_all()

    @staticmethod
    def _good_marks(spec: RoundSpec, good_ids: list[int]) -> list[bool]:
        """The good marks as one bool per image, or 422 for an unknown or repeated id."""
        n = spec.n_images
        unknown = [i for i in good_ids if not 0 <= i < n]
        if unknown:
            raise SubmitError(422, f"unknown image id(s) {unknown[:5]}: this round has ids 0..{n - 1} "
                                   f"(images 1..{n} on the page)")
        if len(set(good_ids)) != len(good_ids):
            raise SubmitError(422, "an image is listed twice in good")
        good = [False] * n
        for i in good_ids:
            good[i] = True
        return good

    @classmethod
    def _check_rules(cls, spec: RoundSpec, good_ids: list[int], best: int | None) -> list[bool]:
        """The good marks of a one-prompt round, and its best checked against them."""
        good, n = cls._good_marks(spec, good_ids), spec.n_images
        if best is None:
            if spec.best_png is None:
                raise SubmitError(422, "choose one best image: there is no current best to keep in this round")
        elif not 0 <= best < n:
            raise SubmitError(422, f"unknown image id {best} for best: this round has ids 0..{n - 1} "
                                   f"(images 1..{n} on the page)")
        elif best not in good_ids:
            raise SubmitError(422, f"the best image (id {best}: image {best + 1} on the page) must also be marked good")
        return good

    @classmethod
    def _check_group_rules(cls, spec: RoundSpec, good_ids: list[int], bests: list[int | None]) -> list[bool]:
        """The rules of a prompt-set round: a best per prompt group, inside its group, marked good (or null: keep
        that prompt's current best, where it has one)."""
        if len(bests) != len(spec.groups):
            raise SubmitError(422, f"bests has {len(bests)} entries, but this round has {len(spec.groups)} prompts "
                                   "(one best, or null, per prompt)")
        good = cls._good_marks(spec, good_ids)
        for (prompt, lo, hi), best, png in zip(spec.groups, bests, spec.group_best_pngs, strict=True):
            if best is None and png is None:
                raise SubmitError(422, f"choose one best image for {prompt!r}: it has no current best to keep")
            if best is not None and not lo <= best < hi:
                raise SubmitError(422, f"the best for {prompt!r} must be one of its images (ids {lo}..{hi - 1}: "
                                       f"images {lo + 1}..{hi} on the page), got id {best}")
            if best is not None and not good[best]:
                raise SubmitError(422, f"the best image for {prompt!r} (id {best}: image {best + 1} on the page) "
                                       "must also be marked good")
        return good

    def close(self) -> None:
        """Close the log connection."""
        self.log.close()
