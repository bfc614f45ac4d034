"""The one error a damaged run folder raises: which file, and what is wrong with it, in one line."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RunFolderError", "one_line"]


def one_line(text: object, limit: int = 200) -> str:
    """``text`` on one line (library messages span several), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class RunFolderError(ValueError):
    """A file of a run folder is unreadable or disagrees with the rest; ``str()`` is ``"PATH: what"``, one line."""

    def __init__(self, path: str | Path, what: str) -> None:
        # (path, what) as the args, so the error pickles: it is broadcast to every process of a launch.
        super().__init__(str(path), one_line(what, limit=400))
        self.path, self.what = Path(path), one_line(what, limit=400)

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"
