"""One writer per folder: a second holder stops at once in one line, and a killed holder leaves no stale lock."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hero.config import load_config
from hero.runs.errors import RunFolderError
from hero.runs.lock import hold_lock
from hero.train import train

HOLDER = textwrap.dedent("""
    import sys, time
    from hero.runs.lock import hold_lock
    with hold_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def test_a_second_holder_is_refused_by_pid_and_the_lock_frees_after(tmp_path):
    with hold_lock(tmp_path / "run"):
        refused = pytest.raises(RunFolderError, match=rf"\.lock: another hero process \(pid {os.getpid()}\)")
        with refused as e, hold_lock(tmp_path / "run"):
            pass
        assert "\n" not in str(e.value)
    with hold_lock(tmp_path / "run"):  # released: taken again
        pass


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"), hold_lock(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with hold_lock(tmp_path):  # no stale-lock step after a SIGKILL
        pass


def test_train_refuses_a_folder_another_process_writes_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, ["sampler.steps=8"], prompt="two red squares", budget=8, images_per_round=8, out=str(out))
    with hold_lock(out), pytest.raises(RunFolderError, match="another hero process"):
        train(cfg, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
