"""Shared pieces of the harness's own integration tests (real processes, private run dirs)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from harness.runstate import proc_start_time
from harness.settings import Settings
from harness.waiting import NotYet, wait_until

T = TypeVar("T")


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    """A private run root per test, so reaping and listing see only this test's sessions."""
    return tmp_path / "run"


@pytest.fixture
def settings(run_root: Path) -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "NATIVE_BINARY"))}
    env["HARNESS_RUN_DIR"] = str(run_root)
    return Settings.from_env(env)


def poll(check: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Poll ``check`` until it returns a truthy value; raises with ``what`` after ``timeout``."""

    def attempt(_remaining: float) -> T:
        value = check()
        if not value:
            raise NotYet(f"{what}: not yet ({value!r})")
        return value

    return wait_until(attempt, instance="test", what=what, timeout=timeout)


def process_gone(pid: int, start: int | None) -> bool:
    """True once the process (pid, start time) no longer runs (reaped, zombie or reused)."""
    return start is None or proc_start_time(pid) != start


def env_for(run_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "NATIVE_BINARY"))}
    env["HARNESS_RUN_DIR"] = str(run_root)
    env.update(extra)
    return env
