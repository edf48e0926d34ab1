"""Run only on purpose (no ``test_`` prefix, so never collected by default): a pytest run
that holds 4 emulator containers until SIGKILLed by test_docker_backend.py."""

from __future__ import annotations

import os
from pathlib import Path

from owner_process import hold_containers


def test_hold_four_containers() -> None:
    hold_containers(
        os.environ["CRASH_SESSION"],
        Path(os.environ["CRASH_RUN_DIR"]),
        os.environ["CRASH_IMAGE"],
        4,
        Path(os.environ["CRASH_ANNOUNCE"]),
    )
