"""The run folder: everything a run needs to be inspected, evaluated and resumed.

    RUN/config.yaml                      resolved config (its ``out:`` is where the run began; --resume DIR uses DIR)
    RUN/feedback.sqlite                  the record of every human judgement (FeedbackLog)
    RUN/rounds/round_003/images/*.png    the images shown in round 3, grid.png beside them
    RUN/rounds/round_003/trajectories.pt the round's trajectories, kept until the round is learned
    RUN/checkpoints/round_003/           LoRA (diffusers format) + state.pt (optimiser, nets, noises, memory), then
                                         settings.json (the settings it was trained with), written last
    RUN/checkpoints/latest               the last complete checkpoint's round, written last (atomically)
    RUN/metrics.jsonl                    one line per round
    RUN/logs/                            tensorboard (accelerate's tracker)
    RUN/.lock                            held by the process writing the run (``hero.runs.lock``), its pid inside

The folder locates itself: ``hero train --resume DIR`` works on DIR wherever it was copied or moved. Before
resuming, ``hero.runs.checks`` reads every file it relies on and checks that they agree (the latest marker,
the checkpoint it names, the feedback log's rounds, the metrics, the pending round's trajectories, and the
settings against those the checkpoint and the log recorded), and writes nothing unless all is well. It
recovers what is safely recoverable (a missing or stale ``latest`` where complete checkpoints agree with the
metrics and the log; a torn last line of ``metrics.jsonl``; missing images of a round whose trajectories are
still there; a judged round whose trajectories are gone is sampled again, and its judgement used only if the
images come out as those on disk, to the bit), warns in one line of missing images it cannot re-render (a
learned round's: its trajectories are dropped), and refuses anything else with one line naming the file: a
``RunFolderError``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from hero.rollout import Trajectories
from hero.runs.atomic import atomic_write_text
from hero.runs.errors import RunFolderError
from hero.toyworld.scenes import image_grid

LORA_FILE = "pytorch_lora_weights.safetensors"
SETTINGS_FILE = "settings.json"  # in each checkpoint folder, written last: its presence means "complete"
_ROUND_DIR = re.compile(r"round_(\d+)")


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def feedback_db(self) -> Path:
        return self.path / "feedback.sqlite"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def latest_path(self) -> Path:
        return self.path / "checkpoints" / "latest"

    def round_dir(self, r: int) -> Path:
        return self.path / "rounds" / f"round_{r:03d}"

    def checkpoint_dir(self, r: int) -> Path:
        return self.path / "checkpoints" / f"round_{r:03d}"

    def image_path(self, r: int, i: int) -> Path:
        return self.round_dir(r) / "images" / f"{i:04d}.png"

    def latest_round(self) -> int:
        """Round of the last complete checkpoint, -1 when none; a ``RunFolderError`` if the marker is unreadable."""
        path = self.latest_path
        if not path.exists():
            return -1
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise RunFolderError(path, f"cannot be read ({e})") from None
        if not text:
            raise RunFolderError(path, "is empty (it should hold the round of the last complete checkpoint)")
        if not (text.isascii() and text.isdigit()):
            raise RunFolderError(path, f"holds {text[:40]!r}, not a round number")
        return int(text)

    def mark_checkpoint(self, r: int) -> None:
        atomic_write_text(self.latest_path, str(r))

    def checkpoint_rounds(self) -> list[int]:
        """Rounds that have a checkpoint folder (complete or not), ascending."""
        folder = self.path / "checkpoints"
        found = (_ROUND_DIR.fullmatch(p.name) for p in folder.iterdir()) if folder.is_dir() else ()
        return sorted(int(m.group(1)) for m in found if m is not None and self.checkpoint_dir(int(m.group(1))).is_dir())

    def checkpoint_complete(self, r: int, legacy: bool = False) -> bool:
        """All of round ``r``'s checkpoint is on disk (``legacy``: a run from before settings.json existed)."""
        d = self.checkpoint_dir(r)
        parts = [d / "state.pt", d / "lora" / LORA_FILE] + ([] if legacy else [d / SETTINGS_FILE])
        return all(p.is_file() and p.stat().st_size > 0 for p in parts)

    def write_checkpoint_settings(self, r: int, settings: dict) -> None:
        """Write round ``r``'s settings.json last, which marks its checkpoint complete."""
        atomic_write_text(self.checkpoint_dir(r) / SETTINGS_FILE, json.dumps({"round": r, **settings}, indent=1))

    def checkpoint_settings(self, r: int) -> dict | None:
        """Round ``r``'s settings.json (None for a checkpoint written before it existed)."""
        path = self.checkpoint_dir(r) / SETTINGS_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunFolderError(path, f"is not readable JSON ({e})") from None
        if not isinstance(data, dict) or data.get("round") != r or not isinstance(data.get("settings"), dict):
            raise RunFolderError(path, f"is not the settings of round {r}'s checkpoint")
        return data

    def save_round(self, r: int, traj: Trajectories) -> None:
        """Write the images to be shown, then the trajectories (their presence means "round sampled")."""
        self.write_images(r, traj.images)
        tmp = self.round_dir(r) / "trajectories.pt.tmp"
        traj.save(tmp)
        tmp.replace(self.round_dir(r) / "trajectories.pt")

    def write_images(self, r: int, images: np.ndarray, only_missing: bool = False) -> None:
        """Write round ``r``'s images and grid.png (``only_missing``: those absent or empty, e.g. on resume)."""
        folder = self.round_dir(r)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            if not only_missing or _missing(self.image_path(r, i)):
                Image.fromarray(im).save(self.image_path(r, i))
        if not only_missing or _missing(folder / "grid.png"):
            image_grid(images).save(folder / "grid.png")

    def missing_images(self, r: int, n: int) -> list[Path]:
        """Round ``r``'s image files (``n`` images and grid.png) that are absent or empty."""
        wanted = [self.image_path(r, i) for i in range(n)] + [self.round_dir(r) / "grid.png"]
        return [p for p in wanted if _missing(p)]

    def load_round(self, r: int) -> Trajectories | None:
        """Round ``r``'s trajectories, None if not sampled (or dropped); a ``RunFolderError`` if unreadable."""
        path = self.round_dir(r) / "trajectories.pt"
        if not path.is_file():
            return None
        if path.stat().st_size == 0:
            raise RunFolderError(path, "is empty (0 bytes)")
        try:
            return Trajectories.load(path)
        except Exception as e:  # torch reports a torn file as RuntimeError, EOFError, pickle errors, ...
            raise RunFolderError(path, f"cannot be read: truncated or not a trajectories file ({e})") from None

    def drop_trajectories(self, r: int) -> None:
        """Free the disk once a round is learned (the images stay)."""
        (self.round_dir(r) / "trajectories.pt").unlink(missing_ok=True)

    def sampled_rounds(self) -> list[int]:
        """Rounds whose trajectories.pt is on disk (sampled, not yet learned), ascending."""
        folder = self.path / "rounds"
        found = (_ROUND_DIR.fullmatch(p.name) for p in folder.iterdir()) if folder.is_dir() else ()
        return sorted(int(m.group(1)) for m in found
                      if m is not None and (self.round_dir(int(m.group(1))) / "trajectories.pt").is_file())

    def best_images_before(self, log, r: int) -> dict[str, np.ndarray]:
        """Each prompt's current best before round ``r`` (``log``: the run's ``FeedbackLog``): the best of the latest
        round that chose one for it, as shown. A prompt whose best's file is gone has none (a new one is picked)."""
        out: dict[str, np.ndarray] = {}
        for k in sorted((k for k in log.rounds() if k < r), reverse=True):
            fb = log.get_round(k)
            for i in fb.best_indices:
                prompt = fb.image_prompt(i)
                if prompt not in out and self.image_path(k, i).is_file():
                    out[prompt] = self.read_image(k, i)
        return out

    def read_image(self, r: int, i: int) -> np.ndarray:
        """Image ``i`` of round ``r`` as (H, W, 3) uint8, as it was shown."""
        return np.asarray(Image.open(self.image_path(r, i)).convert("RGB"))

    def round_images(self, r: int) -> np.ndarray:
        files = sorted((self.round_dir(r) / "images").glob("*.png"))
        return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line (NaN, e.g. "no good image this round", is written as null), on disk before
        ``mark_checkpoint``: a learned round never lacks its line after a power loss."""
        clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_metrics(self, records: list[dict]) -> None:
        """Replace metrics.jsonl with ``records``, atomically."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in records))

    def metrics(self) -> list[dict]:
        """The metric lines (a torn last line, left by a crash mid-append, is left out)."""
        return read_metrics(self.metrics_path)[0]

    def prune_checkpoints(self, keep_last: int) -> None:
        """Remove all but the last ``keep_last`` round checkpoints (the final one is always kept)."""
        rounds = self.checkpoint_rounds()
        for r in rounds[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(self.checkpoint_dir(r), ignore_errors=True)


def read_metrics(path: Path) -> tuple[list[dict], bool]:
    """(records, torn) of a metrics.jsonl; torn: its last line was cut short (no newline, not JSON) and is left
    out. Any other bad line is a ``RunFolderError``."""
    if not path.is_file():
        return [], False
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")  # a torn line may end mid-character
    except OSError as e:
        raise RunFolderError(path, f"cannot be read ({e})") from None
    lines = text.split("\n")
    records: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the last line, without its newline: an append cut short
                return records, True
            raise RunFolderError(path, f"line {i + 1} is not JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("round"), int) or isinstance(rec["round"], bool):
            raise RunFolderError(path, f"line {i + 1} is not a round's metrics (no integer 'round')")
        records.append(rec)
    return records, False


def _missing(path: Path) -> bool:
    return not path.is_file() or path.stat().st_size == 0


def mean_seconds(records: list[dict], key: str) -> float:
    """Mean of ``key`` over the records that timed it (0 if none): a round resumed after a crash with its images
    already sampled logs ``seconds_sampling`` as null, and counting it as 0 would flatter the sampler."""
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else 0.0
