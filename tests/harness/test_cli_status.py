"""`harness status --check-empty`: what CI runs last to prove nothing of ours is left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.runstate import SessionState
from tests.harness.support import env_for


def _status(run_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "status", "--check-empty"],
        env=env_for(run_root),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_empty_passes_on_an_empty_run_dir(run_root: Path) -> None:
    done = _status(run_root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no sessions" in done.stdout


def test_check_empty_fails_and_lists_a_leftover_session(run_root: Path) -> None:
    state = SessionState(run_root, "leftov", kind="library")
    try:
        done = _status(run_root)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "1 session(s) left" in done.stdout
        assert "leftov" in done.stdout
    finally:
        state.remove()
