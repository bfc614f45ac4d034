"""The run folder: everything a run needs to be inspected, evaluated and resumed.

    RUN/config.yaml                      resolved config
    RUN/feedback.sqlite                  the record of every human judgement (FeedbackLog)
    RUN/rounds/round_003/images/*.png    the images shown in round 3, grid.png beside them
    RUN/rounds/round_003/trajectories.pt the round's trajectories, kept until the round is learned
    RUN/checkpoints/round_003/           LoRA (diffusers format) + state.pt (optimiser, nets, noises, memory)
    RUN/checkpoints/latest               the last complete checkpoint's round, written last (atomically)
    RUN/metrics.jsonl                    one line per round
    RUN/logs/                            tensorboard (accelerate's tracker)
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from hero.rollout import Trajectories
from hero.runs.atomic import atomic_write_text
from hero.toyworld.scenes import image_grid


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

    def round_dir(self, r: int) -> Path:
        return self.path / "rounds" / f"round_{r:03d}"

    def checkpoint_dir(self, r: int) -> Path:
        return self.path / "checkpoints" / f"round_{r:03d}"

    def image_path(self, r: int, i: int) -> Path:
        return self.round_dir(r) / "images" / f"{i:04d}.png"

    def latest_round(self) -> int:
        """Round of the last complete checkpoint, -1 when none."""
        latest = self.path / "checkpoints" / "latest"
        return int(latest.read_text()) if latest.is_file() else -1

    def mark_checkpoint(self, r: int) -> None:
        atomic_write_text(self.path / "checkpoints" / "latest", str(r))

    def save_round(self, r: int, traj: Trajectories) -> None:
        """Write the images to be shown, then the trajectories (their presence means "round sampled")."""
        folder = self.round_dir(r)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(traj.images):
            Image.fromarray(im).save(self.image_path(r, i))
        image_grid(traj.images).save(folder / "grid.png")
        tmp = folder / "trajectories.pt.tmp"
        traj.save(tmp)
        tmp.replace(folder / "trajectories.pt")

    def load_round(self, r: int) -> Trajectories | None:
        path = self.round_dir(r) / "trajectories.pt"
        return Trajectories.load(path) if path.is_file() else None

    def drop_trajectories(self, r: int) -> None:
        """Free the disk once a round is learned (the images stay)."""
        (self.round_dir(r) / "trajectories.pt").unlink(missing_ok=True)

    def round_images(self, r: int) -> np.ndarray:
        files = sorted((self.round_dir(r) / "images").glob("*.png"))
        return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line (NaN, e.g. "no good image this round", is written as null)."""
        clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(clean) + "\n")

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def prune_checkpoints(self, keep_last: int) -> None:
        """Remove all but the last ``keep_last`` round checkpoints (the final one is always kept)."""
        rounds = sorted(int(p.name.split("_")[1]) for p in (self.path / "checkpoints").glob("round_*"))
        for r in rounds[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(self.checkpoint_dir(r), ignore_errors=True)


def mean_seconds(records: list[dict], key: str) -> float:
    """Mean of ``key`` over the records that timed it (0 if none): a round resumed after a crash with its images
    already sampled logs ``seconds_sampling`` as null, and counting it as 0 would flatter the sampler."""
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else 0.0
