"""Connecting to the Docker engine, with errors that say how to fix the problem.

The docker SDK's own messages ("Error while fetching server API version: ...
FileNotFoundError(2, 'No such file or directory')") do not say what to do; these do."""

from __future__ import annotations

import os
from collections.abc import Callable

import docker
from docker.errors import DockerException

from harness.docker.names import LOCAL_IMAGE
from harness.errors import PrerequisiteMissing

ClientFactory = Callable[[], docker.DockerClient]

DEFAULT_HOST = "unix:///var/run/docker.sock"


def default_client() -> docker.DockerClient:
    """A client from the environment (DOCKER_HOST etc.), sized for parallel starts."""
    return docker.from_env(max_pool_size=32)


def engine_unreachable(exc: BaseException) -> PrerequisiteMissing:
    host = os.environ.get("DOCKER_HOST", DEFAULT_HOST)
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Permission denied" in str(exc) or isinstance(exc, PermissionError):
        fix = (
            f"this user may not use {host}: run as root, or add the user to the 'docker' group "
            "(`sudo usermod -aG docker $USER`, then log in again)"
        )
    else:
        fix = (
            "start the engine: `sudo scripts/start-dockerd` (starts dockerd in the background, "
            "logs to /var/log/openevse-harness/dockerd.log) or `sudo systemctl start docker`; "
            "install it with `sudo apt-get install docker.io`; check with `docker info`"
        )
        if host != DEFAULT_HOST:
            fix = f"DOCKER_HOST={host}: start the engine it names, or unset DOCKER_HOST and {fix}"
    return PrerequisiteMissing(f"Docker engine unreachable at {host}: {detail}", fix)


def image_missing(image: str) -> PrerequisiteMissing:
    if image == LOCAL_IMAGE:
        fix = "build it offline with `harness image build` (debootstrap + docker import, no registry needed)"
    else:
        fix = (
            f"pull it where a registry is reachable (`docker pull {image}`), or build our emulator "
            f"offline with `harness image build` and use it: HARNESS_EMULATOR_IMAGE={LOCAL_IMAGE}"
        )
    return PrerequisiteMissing(f"emulator image {image} is not present on the Docker engine", fix)


def connect(factory: ClientFactory = default_client) -> docker.DockerClient:
    """A client whose engine answered a ping, or ``PrerequisiteMissing`` with the fix."""
    try:
        client = factory()
        client.ping()
    except (DockerException, OSError) as exc:
        raise engine_unreachable(exc) from exc
    return client
