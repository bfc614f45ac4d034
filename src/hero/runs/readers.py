"""Read-only readers of a run folder's binary files, for the resume checks: each either answers or raises a
``RunFolderError`` naming the file, and none writes anything into the folder (not even SQLite's -wal/-shm)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hero.runs.errors import RunFolderError

__all__ = ["LogSummary", "LoggedRound", "check_safetensors", "check_torch_file", "read_log", "trajectories_summary"]


@dataclass(frozen=True)
class LoggedRound:
    """What the feedback log holds for one round (``n_marks`` 0: a pairwise round)."""

    prompt: str
    n_images: int
    best: int | None
    n_good: int
    n_marks: int
    n_pairs: int


@dataclass(frozen=True)
class LogSummary:
    """The feedback log's rounds; ``state`` is "ok", "missing" (no file) or "empty" (no tables, e.g. 0 bytes)."""

    state: str
    rounds: dict[int, LoggedRound]


def read_log(path: Path) -> LogSummary:
    """Summarise the feedback log at ``path`` from a copy (so the run folder is never touched)."""
    if not path.exists():
        return LogSummary("missing", {})
    with tempfile.TemporaryDirectory(prefix="hero-log-") as tmp:
        copy = Path(tmp) / "feedback.sqlite"
        try:
            shutil.copyfile(path, copy)
            if Path(f"{path}-wal").is_file():  # committed rounds a killed process left in the write-ahead log
                shutil.copyfile(f"{path}-wal", f"{copy}-wal")
        except OSError as e:
            raise RunFolderError(path, f"cannot be read ({e})") from None
        try:
            conn = sqlite3.connect(copy)
            try:
                return _summarise(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise RunFolderError(path, f"is not a readable SQLite feedback log ({e})") from None


def _summarise(conn: sqlite3.Connection) -> LogSummary:
    (check,) = conn.execute("PRAGMA quick_check").fetchone()
    if check != "ok":
        raise sqlite3.DatabaseError(f"integrity check: {check}")
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "rounds" not in tables:
        return LogSummary("empty", {})
    count = {t: dict(conn.execute(f"SELECT round, COUNT(*) FROM {t} GROUP BY round")) if t in tables else {}
             for t in ("judgements", "pairs")}
    good = dict(conn.execute("SELECT round, SUM(good) FROM judgements GROUP BY round")) if "judgements" in tables \
        else {}
    rounds = {}
    for r, prompt, n, best in conn.execute("SELECT round, prompt, n_images, best FROM rounds ORDER BY round"):
        rounds[int(r)] = LoggedRound(str(prompt), int(n), best, int(good.get(r) or 0),
                                     int(count["judgements"].get(r, 0)), int(count["pairs"].get(r, 0)))
    return LogSummary("ok", rounds)


def check_torch_file(path: Path) -> None:
    """``path`` is a whole ``torch.save`` file: present, not empty, its zip directory and every CRC intact."""
    _present(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise RunFolderError(path, f"is truncated or not a PyTorch file ({e})") from None
    if bad is not None:
        raise RunFolderError(path, f"is corrupt (checksum mismatch in {bad})")


def check_safetensors(path: Path) -> None:
    """``path`` is a whole safetensors file: its header parses and its size is what the header says."""
    _present(path)
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError("header length past the end of the file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise RunFolderError(path, f"is truncated or not a safetensors file ({e})") from None
    if 8 + n + end != size:
        raise RunFolderError(path, f"is truncated or damaged ({size} bytes, its header describes {8 + n + end})")


def trajectories_summary(path: Path) -> tuple[list[str], int]:
    """(prompts, number of images) of a trajectories.pt, checked whole but read without loading its tensors."""
    import torch  # lazy: the other readers need no torch

    check_torch_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return [str(p) for p in state["prompts"]], int(state["images"].shape[0])
    except Exception as e:  # a file that zips fine but is no Trajectories
        raise RunFolderError(path, f"is not a round's trajectories ({e})") from None


def _present(path: Path) -> None:
    if not path.is_file():
        raise RunFolderError(path, "is missing")
    if path.stat().st_size == 0:
        raise RunFolderError(path, "is empty (0 bytes)")
