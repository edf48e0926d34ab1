"""Emulator faults on the Docker backend: the controller container killed or stopped and
back, on a real engine, with the stand-in firmware behind the python bridge."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from harness.emulators.docker import DockerEmulatorHandle
from harness.errors import PrerequisiteMissing
from harness.faults import FaultError
from harness.pair import Pair
from harness.rig import Rig
from harness.settings import Settings
from tests.harness.faults_support import (
    answered_again,
    eventually,
    find_boot_reads_after_ab,
    plug_in_is_seen,
    require,
    serial,
    status,
)

IMAGE = os.environ.get("HARNESS_EMULATOR_IMAGE", "openevse-harness/emulator:local")

pytestmark = pytest.mark.docker


def start_rig(settings: Settings, workdir: Path, bridge: str) -> Rig:
    rig = Rig(
        settings.with_(emulator_backend="docker", emulator_image=IMAGE, bridge=bridge), 1, workdir=workdir
    )
    try:
        return rig.start()
    except PrerequisiteMissing as exc:
        rig.close()
        if settings.ci:
            raise
        pytest.skip(f"Docker backend unavailable: {exc.what} (fix: {exc.fix})")


@pytest.fixture
def docker_pair(settings: Settings, tmp_path: Path) -> Iterator[Pair]:
    rig = start_rig(settings, tmp_path / "rig", "python")
    try:
        yield rig[0]
    finally:
        rig.close()


def handle(pair: Pair) -> DockerEmulatorHandle:
    assert isinstance(pair.emulator, DockerEmulatorHandle)
    return pair.emulator


@pytest.mark.parametrize("kill", [True, False], ids=["kill", "stop"])
def test_container_gone_and_back_on_the_same_ports(docker_pair: Pair, kill: bool) -> None:
    pair = docker_pair
    emulator = handle(pair)
    old = emulator.container
    url, rapi_port = pair.emulator_url, emulator.rapi_port
    assert pair._state is not None
    with emulator.stopped(kill=kill):
        off = time.monotonic()
        old.reload()
        assert old.status == "exited", old.status
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/api/status", timeout=2)
        lost = serial(pair).engine.totals
        eventually(lambda: require(lost["disconnected"] >= 1), "a command lost: the EVSE is gone")
        before = status(pair)
        eventually(lambda: require(lost["disconnected"] >= 3), "commands keep going")
        assert status(pair)["comm_success"] == before["comm_success"], "a command succeeded without an EVSE"
    new = emulator.container
    assert new.id != old.id
    assert (pair.emulator_url, emulator.rapi_port) == (url, rapi_port)
    containers = pair._state.snapshot()["containers"]
    assert new.id in containers
    assert old.id not in containers
    client = docker.from_env()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(old.id)
    # The new controller's `$AB` makes the firmware re-read (firmware.md §6.1, §6.2).
    find_boot_reads_after_ab(pair, since=off)
    answered_again(pair, time.monotonic())
    plug_in_is_seen(pair)
    log = emulator.log_path.read_text()
    assert f"container {old.short_id} (stopped for a fault)" in log


def test_container_stop_needs_the_python_bridge(settings: Settings, tmp_path: Path) -> None:
    rig = start_rig(settings, tmp_path / "socat", "socat")
    try:
        emulator = handle(rig[0])
        with pytest.raises(FaultError, match="HARNESS_BRIDGE=python"), emulator.stopped(kill=True):
            pytest.fail("the block ran: the container was stopped under a socat bridge")
        emulator.container.reload()
        assert emulator.container.status == "running"
        assert emulator.alive() is None
    finally:
        rig.close()
