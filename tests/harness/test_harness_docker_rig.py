"""The rig with the Docker emulator backend: same pairs, containers instead of processes."""

from __future__ import annotations

import os

import docker
import pytest

from harness.errors import PrerequisiteMissing
from harness.rig import Rig
from harness.settings import Settings
from tests.harness.support import poll

IMAGE = os.environ.get("HARNESS_EMULATOR_IMAGE", "openevse-harness/emulator:local")

pytestmark = pytest.mark.docker


def test_docker_rig_restart_and_cleanup(settings: Settings) -> None:
    docker_settings = settings.with_(emulator_backend="docker", emulator_image=IMAGE)
    rig = Rig(docker_settings, 2)
    try:
        rig.start()
    except PrerequisiteMissing as exc:
        if docker_settings.ci:
            raise
        pytest.skip(f"Docker backend unavailable: {exc.what} (fix: {exc.fix})")
    try:
        assert rig.state is not None
        containers = list(rig.state.data["containers"])
        assert len(containers) == 2
        for pair in rig:
            assert pair["emulator_container"] is not None
            assert pair.api.get_json("/status")["state"] != 0
        rig.restart_firmware(1)
        assert rig[1].api.get_json("/status")["rapi_connected"] == 1
        assert rig[1].emulator_api.post("/api/ev/connect").status_code == 200
        poll(lambda: rig[1].api.get_json("/status").get("vehicle") == 1, "vehicle 1 via container")
    finally:
        rig.close()
    client = docker.from_env()
    left = [c.id for c in client.containers.list(all=True) if c.id in containers]
    assert left == []
