"""The feedback log: every human judgement of a run, stored durably in SQLite the moment it arrives.

One *feedback* is one image judged (the paper's accounting). A round is written in one transaction that is
committed (WAL, synchronous=FULL: on disk) before ``record_*`` returns, so a crash loses no judgement that was
acknowledged and never leaves half a round behind.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hero.runs.atomic import atomic_write_text

__all__ = ["DuplicateRound", "FeedbackLog", "InvalidFeedback", "Relabel", "RoundFeedback", "RoundRecorder",
           "read_jsonl"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, prompt TEXT NOT NULL, n_images INTEGER NOT NULL, best INTEGER NULL,
    source TEXT NOT NULL, submitted_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS judgements (
    round INTEGER NOT NULL REFERENCES rounds(round), image INTEGER NOT NULL, good INTEGER NOT NULL,
    is_best INTEGER NOT NULL, PRIMARY KEY (round, image));
CREATE TABLE IF NOT EXISTS pairs (
    round INTEGER NOT NULL REFERENCES rounds(round), winner INTEGER NOT NULL, loser INTEGER NOT NULL,
    PRIMARY KEY (round, winner, loser));
CREATE TABLE IF NOT EXISTS scores (
    round INTEGER NOT NULL REFERENCES rounds(round), image INTEGER NOT NULL, score REAL NOT NULL,
    PRIMARY KEY (round, image));
CREATE TABLE IF NOT EXISTS relabels (
    round INTEGER NOT NULL REFERENCES rounds(round), image INTEGER NOT NULL, prompt TEXT NULL, good INTEGER NULL,
    score REAL NULL, source TEXT NOT NULL, PRIMARY KEY (round, image));
CREATE TABLE IF NOT EXISTS image_prompts (
    round INTEGER NOT NULL REFERENCES rounds(round), image INTEGER NOT NULL, prompt TEXT NOT NULL,
    PRIMARY KEY (round, image));
"""
# A prompt-set round (``hero.prompts``) stores each image's prompt in image_prompts and one best per prompt in
# judgements.is_best; its rounds row has best NULL and, as prompt, the round's distinct prompts, one per line.


class DuplicateRound(ValueError):
    """The round is already recorded; the log is append-only, so nothing was written."""


class InvalidFeedback(ValueError):
    """The feedback is inconsistent (index out of range, best not good, ...); nothing was written."""


@dataclass(frozen=True)
class RoundFeedback:
    """One round's judgements, as a feedback source returns them and as the log gives them back.

    ``best`` indexes this round's images (None keeps the current best). A source that grades images also gives
    ``scores`` (one per image: the judge's graded score, a reward value), which reward-based algorithms (DDPO,
    DPOK) use instead of good = 1 / not good = 0. A pairwise round (D3PO) has no good/best marks: ``good`` is
    empty and ``pairs`` lists (winner, loser) over ``n_images`` images. ``round``, ``prompt`` and
    ``submitted_at`` are set on rounds read back from the log.

    A prompt-set round gives each image's prompt in ``prompts`` and the best image of each prompt in ``bests``
    (``best`` is then None); a one-prompt round has neither.
    """

    good: list[bool]
    best: int | None
    source: str
    scores: list[float] | None = None
    pairs: list[tuple[int, int]] | None = None  # pairwise rounds only
    n_images: int | None = None  # only needed for pairwise rounds (a good/best round has len(good) images)
    round: int | None = None
    prompt: str | None = None
    submitted_at: float | None = None
    prompts: list[str] | None = None  # a prompt-set round: each image's prompt
    bests: tuple[int, ...] | None = None  # a prompt-set round: the best image of each prompt that has one

    @property
    def best_indices(self) -> tuple[int, ...]:
        """The round's best images: one per prompt of a prompt-set round, else ``best`` (if any)."""
        if self.bests is not None:
            return tuple(self.bests)
        return () if self.best is None else (self.best,)

    def image_prompt(self, i: int) -> str | None:
        """The prompt image ``i`` was sampled for."""
        return self.prompts[i] if self.prompts is not None else self.prompt

    @property
    def n_feedback(self) -> int:
        """Images judged: the paper's unit (the current best, shown again, was judged before)."""
        return self.n_images if self.n_images is not None else len(self.good)

    @property
    def pairwise(self) -> bool:
        """Whether this round holds pairwise preferences instead of good/best marks."""
        return self.pairs is not None


@dataclass(frozen=True)
class Relabel:
    """A second look at one of a round's images, for another prompt (HERD's hindsight relabels).

    It costs one feedback whether or not it found a prompt: ``prompt`` is the description the image was relabelled
    with (None: it could not be described), ``good``/``score`` the judgement of the image for that prompt.
    """

    image: int
    prompt: str | None
    good: bool | None
    score: float | None
    source: str


class FeedbackLog:
    """Append-only SQLite record of human feedback; safe to share across threads and processes."""

    def __init__(self, path: str | Path) -> None:
        """Open (creating if needed) the log at ``path``."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a round is exactly one transaction.
        # check_same_thread=False + our lock: the web server's threads and the trainer share one connection.
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (a second process)
            self._conn.execute("PRAGMA synchronous=FULL")  # fsync at every commit: committed means on disk
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeedbackLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------------------

    def record_round(self, round: int, prompt: str, good: Sequence[bool], best: int | None, source: str,
                     scores: Sequence[float] | None = None, prompts: Sequence[str] | None = None,
                     bests: Sequence[int] | None = None) -> None:
        """Store a round's good/not-good marks, best pick and optional graded scores in one committed transaction.

        A prompt-set round passes each image's prompt (``prompts``) and the best of each prompt (``bests``, at
        most one per prompt) instead of ``best``.
        """
        round = _check_round(round)
        good = [bool(g) for g in good]
        n = len(good)
        if n == 0:
            raise InvalidFeedback(f"round {round}: no images judged")
        if prompts is not None and (len(prompts) != n or not all(isinstance(p, str) and p for p in prompts)):
            raise InvalidFeedback(f"round {round}: {len(prompts)} prompts for {n} images")
        if best is not None and bests is not None:
            raise InvalidFeedback(f"round {round}: give best (one prompt) or bests (a prompt set), not both")
        marked = [best] if best is not None else list(bests or [])
        for b in marked:
            if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < n:
                raise InvalidFeedback(f"round {round}: best={b!r} is not an image index in [0, {n})")
            if not good[b]:
                raise InvalidFeedback(f"round {round}: best image {b} is not marked good")
        groups = [prompts[b] if prompts is not None else prompt for b in marked]
        if len(set(groups)) != len(groups):
            raise InvalidFeedback(f"round {round}: more than one best image for a prompt")
        if scores is not None and len(scores) != n:
            raise InvalidFeedback(f"round {round}: {len(scores)} scores for {n} images")
        rows = [(round, i, int(g), int(i in marked)) for i, g in enumerate(good)]
        # Scores are kept so that a resumed run learns from exactly what the uninterrupted one would have.
        more = [] if scores is None else [("INSERT INTO scores VALUES (?, ?, ?)",
                                           [(round, i, float(x)) for i, x in enumerate(scores)])]
        if prompts is not None:
            more.append(("INSERT INTO image_prompts VALUES (?, ?, ?)", [(round, i, p) for i, p in enumerate(prompts)]))
            prompt = "\n".join(dict.fromkeys(prompts))
        self._write(round, prompt, n, best, source, "INSERT INTO judgements VALUES (?, ?, ?, ?)", rows, more)

    def record(self, round: int, prompt: str, feedback: RoundFeedback) -> None:
        """Store a source's answer for ``round``, good/best marks or pairs, committed before it returns."""
        if feedback.pairwise:
            self.record_pairs(round, prompt, feedback.pairs, feedback.n_feedback, feedback.source)
        else:
            self.record_round(round, prompt, feedback.good, feedback.best, feedback.source, feedback.scores,
                              feedback.prompts, feedback.bests)

    def record_pairs(self, round: int, prompt: str, pairs: Sequence[tuple[int, int]], n_images: int,
                     source: str) -> None:
        """Store a round of pairwise preferences (winner, loser) over ``n_images`` images, committed at once."""
        round = _check_round(round)
        if not isinstance(n_images, int) or n_images < 2:
            raise InvalidFeedback(f"round {round}: n_images={n_images!r}, pairwise feedback needs at least 2")
        rows, seen = [], set()
        for pair in pairs:
            try:
                w, loser = (int(x) for x in pair)
            except (TypeError, ValueError):
                raise InvalidFeedback(f"round {round}: pair {pair!r} is not (winner, loser)") from None
            if not (0 <= w < n_images and 0 <= loser < n_images) or w == loser:
                raise InvalidFeedback(f"round {round}: pair {(w, loser)} is not two distinct images in [0, {n_images})")
            if (w, loser) in seen:
                raise InvalidFeedback(f"round {round}: pair {(w, loser)} given twice")
            seen.add((w, loser))
            rows.append((round, w, loser))
        self._write(round, prompt, n_images, None, source, "INSERT INTO pairs VALUES (?, ?, ?)", rows)

    def _write(self, round: int, prompt: str, n: int, best: int | None, source: str, sql: str, rows: list,
               more: Sequence[tuple[str, list]] = ()) -> None:
        with self._lock:
            # BEGIN IMMEDIATE takes the write lock up front, so the duplicate check and the insert cannot
            # interleave with another process recording the same round.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if self._conn.execute("SELECT 1 FROM rounds WHERE round = ?", (round,)).fetchone():
                    raise DuplicateRound(f"round {round} is already recorded in {self.path}")
                self._conn.execute("INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?)",
                                   (round, str(prompt), n, best, str(source), time.time()))
                self._conn.executemany(sql, rows)
                for statement, values in more:
                    self._conn.executemany(statement, values)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def record_relabels(self, round: int, relabels: Sequence[Relabel]) -> None:
        """Store the relabels made of ``round``'s images, replacing any stored before, in one committed transaction.

        Replacing (not refusing) because a round whose checkpoint a crash interrupted is learned again on resume,
        from the same state and seeds, and so relabels the same images the same way.
        """
        round = _check_round(round)
        rows = [(round, int(x.image), x.prompt, None if x.good is None else int(x.good), x.score, str(x.source))
                for x in relabels]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                n = self._conn.execute("SELECT n_images FROM rounds WHERE round = ?", (round,)).fetchone()
                if n is None:
                    raise InvalidFeedback(f"round {round}: relabels of a round that is not recorded")
                bad = [r[1] for r in rows if not 0 <= r[1] < n[0]]
                if bad or len({r[1] for r in rows}) != len(rows):
                    raise InvalidFeedback(f"round {round}: relabelled images {sorted(r[1] for r in rows)} are not "
                                          f"distinct images in [0, {n[0]})")
                self._conn.execute("DELETE FROM relabels WHERE round = ?", (round,))
                self._conn.executemany("INSERT INTO relabels VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    # -- reading -------------------------------------------------------------------------------------------

    def get_round(self, round: int) -> RoundFeedback | None:
        """The feedback of ``round``, or None if it was never recorded."""
        with self._lock:
            row = self._conn.execute("SELECT round, prompt, n_images, best, source, submitted_at FROM rounds "
                                     "WHERE round = ?", (round,)).fetchone()
            if row is None:
                return None
            good = [bool(g) for (g,) in self._conn.execute(
                "SELECT good FROM judgements WHERE round = ? ORDER BY image", (round,))]
            pairs = [(w, lo) for w, lo in self._conn.execute(
                "SELECT winner, loser FROM pairs WHERE round = ? ORDER BY winner, loser", (round,))]
            scores = [x for (x,) in self._conn.execute(
                "SELECT score FROM scores WHERE round = ? ORDER BY image", (round,))]
            prompts = [p for (p,) in self._conn.execute(
                "SELECT prompt FROM image_prompts WHERE round = ? ORDER BY image", (round,))]
            bests = tuple(i for (i,) in self._conn.execute(
                "SELECT image FROM judgements WHERE round = ? AND is_best = 1 ORDER BY image", (round,)))
        r, prompt, n, best, source, at = row
        return RoundFeedback(good=good, best=best, source=source, scores=scores or None,
                             pairs=None if good else pairs, n_images=n, round=r, prompt=prompt, submitted_at=at,
                             prompts=prompts or None, bests=bests if prompts else None)

    def rounds(self) -> list[int]:
        """Recorded round numbers, ascending."""
        with self._lock:
            return [r for (r,) in self._conn.execute("SELECT round FROM rounds ORDER BY round")]

    def all_rounds(self) -> list[RoundFeedback]:
        """Every recorded round, ascending."""
        return [fb for r in self.rounds() if (fb := self.get_round(r)) is not None]

    def relabels(self, round: int) -> list[Relabel]:
        """The relabels stored for ``round``, by image."""
        with self._lock:
            rows = self._conn.execute("SELECT image, prompt, good, score, source FROM relabels WHERE round = ? "
                                      "ORDER BY image", (round,)).fetchall()
        return [Relabel(i, p, None if g is None else bool(g), x, src) for i, p, g, x, src in rows]

    def n_feedback(self) -> int:
        """Images judged so far, relabels included (one image judged = one feedback, the paper's unit)."""
        with self._lock:
            (n,) = self._conn.execute("SELECT COALESCE(SUM(n_images), 0) FROM rounds").fetchone()
            (k,) = self._conn.execute("SELECT COUNT(*) FROM relabels").fetchone()
        return int(n) + int(k)

    def preference_pairs(self) -> list[tuple[int, int, int]]:
        """(round, winner, loser): best beats every other image, good beats not-good, plus explicit pairs."""
        out: list[tuple[int, int, int]] = []
        for fb in self.all_rounds():
            out.extend(_implied_pairs(fb))
            out.extend((fb.round, w, lo) for w, lo in fb.pairs or ())
        return out

    def export_jsonl(self, path: str | Path) -> int:
        """Write one JSON object per judged image to ``path`` (atomically); returns the number of lines.

        A relabel (a second look at a round's image for another prompt, HERD's) is a line of its own, after its
        round's, with ``"relabel": true``, the prompt it was judged for (null: not described) and its judgement.
        """
        lines = []
        for fb in self.all_rounds():
            beats: dict[int, list[int]] = {}
            for w, lo in fb.pairs or ():
                beats.setdefault(w, []).append(lo)
            for i in range(fb.n_images):
                rec = {"round": fb.round, "image": i, "prompt": fb.image_prompt(i), "source": fb.source,
                       "submitted_at": fb.submitted_at, "n_images": fb.n_images,
                       **({"prompt_set": True} if fb.prompts is not None else {})}
                if fb.good:  # a good/best round; a pairwise round lists whom each image beat instead
                    rec.update(good=fb.good[i], best=i in fb.best_indices)
                    if fb.scores is not None:
                        rec["score"] = fb.scores[i]
                else:
                    rec["beats"] = beats.get(i, [])
                lines.append(json.dumps(rec) + "\n")
            for x in self.relabels(fb.round):
                lines.append(json.dumps({"round": fb.round, "image": x.image, "relabel": True, "prompt": x.prompt,
                                         "good": x.good, "score": x.score, "source": x.source}) + "\n")
        atomic_write_text(path, "".join(lines))
        return len(lines)


class RoundRecorder:
    """The round loop's writer of one round: the only code that records feedback in the log.

    The loop makes one per round and hands it to the feedback source. A source that must know its answer is on disk
    before it confirms it to someone (the web page answers the browser only after the commit) calls it itself;
    for every other source the loop calls it with what the source returned. Either way the round is written once,
    committed (``FeedbackLog.record``) before the call returns.
    """

    def __init__(self, log: FeedbackLog, round: int, prompt: str) -> None:
        self.log, self.round, self.prompt = log, round, prompt
        self.recorded: RoundFeedback | None = None  # what was written, once it is

    def __call__(self, feedback: RoundFeedback) -> None:
        if self.recorded is not None:
            raise DuplicateRound(f"round {self.round} is already recorded by this recorder")
        self.log.record(self.round, self.prompt, feedback)
        self.recorded = feedback


def read_jsonl(path: str | Path) -> list[RoundFeedback]:
    """Rebuild the rounds from an ``export_jsonl`` file (the inverse of the export; relabel lines are skipped)."""
    by_round: dict[int, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get("relabel"):
                    continue
                by_round.setdefault(rec["round"], []).append(rec)
    out = []
    for r in sorted(by_round):
        recs = sorted(by_round[r], key=lambda x: x["image"])
        first = recs[0]
        scores, prompts, bests = None, None, None
        if first.get("prompt_set"):
            prompts = [x["prompt"] for x in recs]
            bests = tuple(x["image"] for x in recs if x.get("best"))
        if "good" in first:
            best = None if prompts else next((x["image"] for x in recs if x["best"]), None)
            good, pairs = [x["good"] for x in recs], None
            scores = [x["score"] for x in recs] if "score" in first else None
        else:
            best, good = None, []
            pairs = sorted((x["image"], lo) for x in recs for lo in x["beats"])
        out.append(RoundFeedback(good=good, best=best, source=first["source"], scores=scores, pairs=pairs,
                                 n_images=first["n_images"], round=r,
                                 prompt="\n".join(dict.fromkeys(prompts)) if prompts else first["prompt"],
                                 submitted_at=first["submitted_at"], prompts=prompts, bests=bests))
    return out


def _check_round(round: int) -> int:
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise InvalidFeedback(f"round must be an integer >= 0, got {round!r}")
    return round


def _implied_pairs(fb: RoundFeedback) -> list[tuple[int, int, int]]:
    """Best beats every other image of its prompt, good beats not-good of the same prompt."""
    out = []
    same = [fb.image_prompt(i) for i in range(len(fb.good))]
    bests = fb.best_indices
    for b in bests:
        out += [(fb.round, b, j) for j in range(len(fb.good)) if j != b and same[j] == same[b]]
    # Good beats not-good; the best's wins were all listed above.
    winners = [i for i, g in enumerate(fb.good) if g and i not in bests]
    losers = [j for j, g in enumerate(fb.good) if not g]
    out += [(fb.round, i, j) for i in winners for j in losers if same[i] == same[j]]
    return out
