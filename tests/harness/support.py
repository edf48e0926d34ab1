"""Helpers shared by the harness's own integration tests. Imported by module path
(``from tests.harness.support import poll``), never as ``conftest``: which module pytest
registers under that name depends on collection order."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from harness.runstate import proc_start_time
from harness.waiting import NotYet, wait_until

T = TypeVar("T")


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
