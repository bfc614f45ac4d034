"""One writer per folder: an advisory lock that the operating system drops when its process dies, even by SIGKILL.

Two processes training into the same run folder would interleave their rounds in ``metrics.jsonl`` and the
feedback log (seen once: a bench stopped with ``pkill`` left its cell process running, and the rerun started a
second one beside it). ``hold_lock(folder)`` makes the second one stop at once, in one line, before it writes
anything; because the lock dies with its process, a run killed at any moment resumes without a stale-lock step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from hero.runs.errors import RunFolderError

try:  # POSIX; elsewhere there is no lock (and no second-writer check)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_FILE", "hold_lock"]

LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s write lock for the block (creating the folder), or raise a ``RunFolderError`` at once.

    Args:
        folder: the folder one process at a time may write (a run folder, a bench cell).

    Raises:
        RunFolderError: another live process holds the lock; the message names it by pid.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    # "a+": never truncates, so the holder's pid stays readable while another process tries the lock.
    with path.open("a+") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                raise RunFolderError(path, f"another hero process (pid {holder}) is writing {folder}: wait for it "
                                           "or stop it, or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
