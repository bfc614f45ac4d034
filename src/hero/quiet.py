"""Library chatter a user cannot act on, hidden once per process (the CLI, the demo, a bench cell)."""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    """Hide library chatter a user cannot act on (torchvision fallbacks, weight-loading bars)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
