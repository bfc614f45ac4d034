"""Metrics to tensorboard through accelerate's trackers (skipped quietly when tensorboard is absent)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
    return out


class Tracker:
    """accelerate's tensorboard tracker writing to RUN/logs; a no-op without tensorboard."""

    def __init__(self, logdir: Path, cfg) -> None:
        self.accelerator = None
        if importlib.util.find_spec("tensorboard") is None:
            return
        from accelerate import Accelerator

        self.accelerator = Accelerator(log_with="tensorboard", project_dir=str(logdir), cpu=True)
        self.accelerator.init_trackers("hero", config=_flat(cfg.model_dump()))

    def log(self, record: dict, step: int) -> None:
        if self.accelerator is not None:
            scalars = {k: v for k, v in _flat(record).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            self.accelerator.log(scalars, step=step)

    def close(self) -> None:
        if self.accelerator is not None:
            self.accelerator.end_training()
