"""Shared pieces of the harness's own integration tests (real processes, private run dirs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.settings import Settings


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    """A private run root per test, so reaping and listing see only this test's sessions."""
    return tmp_path / "run"


@pytest.fixture
def settings(run_root: Path) -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "NATIVE_BINARY"))}
    env["HARNESS_RUN_DIR"] = str(run_root)
    return Settings.from_env(env)
