"""Fixtures for tests on a real Docker engine (marker ``docker``).

Under CI=true a missing engine or image is a failure with the reason, never a skip
(upstream-harness.md W15); on a developer machine it is a skip with the reason."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from harness.docker.engine import connect
from harness.docker.image import build_main
from harness.docker.names import LOCAL_IMAGE
from harness.docker.reaper import remove_session_containers
from harness.errors import PrerequisiteMissing


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
        pytest.fail(f"the Docker tests cannot run here (CI=true, so this fails): {reason}", pytrace=False)
    pytest.skip(f"no usable Docker engine: {reason}")


@pytest.fixture(scope="session")
def docker_client() -> Any:
    try:
        return connect()
    except PrerequisiteMissing as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def emulator_image(docker_client: Any) -> str:
    """Our emulator image, built (or found up to date) by `harness image build`."""
    code = build_main([])
    if code != 0:
        unavailable(f"`harness image build` exited with {code}; its output is in this test's captured stdout")
    return LOCAL_IMAGE


@pytest.fixture
def session(docker_client: Any) -> Iterator[str]:
    """A fresh session id; afterwards no container of it may remain (removed, then reported)."""
    sid = "t" + uuid.uuid4().hex[:10]
    yield sid
    left = remove_session_containers(docker_client, sid)
    assert not left, f"the test left containers of session {sid} behind: {left}"
