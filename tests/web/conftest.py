"""Fixtures of the web tests."""

from __future__ import annotations

import pytest
from webutil import make_run

from hero.web.session import Session


@pytest.fixture
def session(tmp_path):
    """A session over a fake run with two sampled rounds of 8 images (rounds total 2, budget 16)."""
    make_run(tmp_path / "run")
    s = Session(tmp_path / "run", rounds_total=2, budget=16)
    yield s
    s.finish()
    s.close()
