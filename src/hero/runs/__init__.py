"""A run's durable state: atomic file writes and the SQLite feedback log."""

from hero.runs.atomic import atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_text, fsync_dir
from hero.runs.errors import RunFolderError
from hero.runs.feedback_log import (
    DuplicateRound,
    FeedbackLog,
    InvalidFeedback,
    Relabel,
    RoundFeedback,
    RoundRecorder,
    read_jsonl,
)

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_dir",
           "DuplicateRound", "FeedbackLog", "InvalidFeedback", "Relabel", "RoundFeedback", "RoundRecorder",
           "RunFolderError", "read_jsonl"]
