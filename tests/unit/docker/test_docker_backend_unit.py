"""The Docker backend against a fake engine: what it asks the engine for, and in what order."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import requests
from docker.errors import DockerException
from docker_fakes import FakeEngine

import harness.emulators.docker as backend_mod
from harness.docker import labels as L
from harness.docker.names import LOCAL_IMAGE, UPSTREAM_IMAGE, UPSTREAM_IMAGE_REPO
from harness.emulators.base import EmulatorSpec
from harness.emulators.docker import DockerBackend, container_environment, published_port
from harness.errors import PrerequisiteMissing, ProcessDied, TeardownErrors


def spec(tmp_path: Path, index: int = 0, session: str = "sx1") -> EmulatorSpec:
    return EmulatorSpec(
        instance=f"evse-{session}-{index}",
        index=index,
        session=session,
        run_dir=tmp_path / session / f"i{index}",
        startup_timeout=2.0,
    )


@pytest.fixture
def ready_probes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Readiness probes that succeed at once, recording what they were asked."""
    asked: list[tuple[str, Any]] = []

    def rapi(port: int, timeout: float) -> bool:
        asked.append(("rapi", port))
        return True

    def http(url: str, timeout: float) -> bool:
        asked.append(("http", url))
        return True

    monkeypatch.setattr(backend_mod, "rapi_answers", rapi)
    monkeypatch.setattr(backend_mod, "http_status_ok", http)
    return asked


def make(engine: FakeEngine, **kwargs: Any) -> DockerBackend:
    return DockerBackend(LOCAL_IMAGE, lambda: engine, use_reaper=False, **kwargs)


# --- port parsing -------------------------------------------------------------------------


def test_published_port_reads_the_host_port() -> None:
    ports = {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32771"}]}
    assert published_port(ports, "8080/tcp") == 32771


@pytest.mark.parametrize("ports", [None, {}, {"8080/tcp": None}, {"8080/tcp": []}, {"8023/tcp": []}])
def test_published_port_is_none_until_published(ports: dict[str, Any] | None) -> None:
    assert published_port(ports, "8080/tcp") is None


@pytest.mark.parametrize("host_ip", ["0.0.0.0", "::", ""])  # noqa: S104 - refused addresses
def test_published_port_refuses_any_address_but_loopback(host_ip: str) -> None:
    ports = {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "1"}, {"HostIp": host_ip, "HostPort": "1"}]}
    with pytest.raises(Exception, match=r"127\.0\.0\.1 only"):
        published_port(ports, "8080/tcp")


# --- start ---------------------------------------------------------------------------------


def test_start_asks_for_loopback_ports_chosen_by_docker_labels_and_no_auto_remove(
    tmp_path: Path, ready_probes: list[tuple[str, Any]]
) -> None:
    engine = FakeEngine(images={LOCAL_IMAGE})
    handle = make(engine, run_id="run7").start(spec(tmp_path))
    [container] = engine.containers_
    kw = container.kwargs
    assert kw["ports"] == {"8080/tcp": ("127.0.0.1", None), "8023/tcp": ("127.0.0.1", None)}
    assert kw["auto_remove"] is False
    assert kw["command"] is None
    assert kw["environment"]["SERIAL_MODE"] == "tcp"
    assert kw["environment"]["SERIAL_TCP_PORT"] == "8023"
    assert kw["environment"]["WEB_PORT"] == "8080"
    assert kw["labels"][L.SESSION] == "sx1"
    assert kw["labels"][L.RUN] == "run7"
    assert kw["labels"][L.INSTANCE] == "evse-sx1-0"
    assert kw["labels"][L.OWNER_PID] == str(os.getpid())
    assert kw["labels"][L.OWNER_START] == L.process_start_time(os.getpid())
    # The ports handed out are the ones the engine reported, on 127.0.0.1.
    assert handle.web_url == f"http://127.0.0.1:{container.ports['8080/tcp'][0]['HostPort']}"
    assert handle.rapi_port == int(container.ports["8023/tcp"][0]["HostPort"])
    assert handle.rapi_host == "127.0.0.1"
    assert ("rapi", handle.rapi_port) in ready_probes
    assert ("http", f"{handle.web_url}/api/status") in ready_probes
    assert handle.describe() == f"container {container.short_id}"
    assert handle.alive() is None
    handle.stop()


def test_command_override_is_passed(tmp_path: Path, ready_probes: list[tuple[str, Any]]) -> None:
    engine = FakeEngine(images={LOCAL_IMAGE})
    make(engine, command=["sh", "-c", "exit 2"]).start(spec(tmp_path)).stop()
    assert engine.containers_ == []
    assert engine.journal[0][0] == "create"


def test_image_defaults_to_env_then_pinned_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_EMULATOR_IMAGE", raising=False)
    assert DockerBackend().image == UPSTREAM_IMAGE
    assert UPSTREAM_IMAGE.startswith(UPSTREAM_IMAGE_REPO + ":")
    assert not UPSTREAM_IMAGE.endswith(":latest")
    monkeypatch.setenv("HARNESS_EMULATOR_IMAGE", "x/y:z")
    assert DockerBackend().image == "x/y:z"
    assert DockerBackend("a/b:c").image == "a/b:c"


def test_environment_listens_inside_the_container_namespace() -> None:
    env = container_environment()
    assert env["WEB_HOST"] == env["RAPI_HOST"] == "0.0.0.0"  # noqa: S104


# --- stop ----------------------------------------------------------------------------------


def test_stop_saves_logs_before_remove_then_is_idempotent(
    tmp_path: Path, ready_probes: list[tuple[str, Any]]
) -> None:
    engine = FakeEngine(images={LOCAL_IMAGE})
    handle = make(engine).start(spec(tmp_path))
    cid = engine.containers_[0].short_id
    engine.journal.clear()
    handle.stop(timeout=3.0)
    assert [what for what, c in engine.journal if c == cid] == ["stop", "logs", "remove"]
    assert handle.log_path == tmp_path / "sx1" / "i0" / "emulator.log"
    assert handle.log_path.read_bytes() == b"ready\nstopped on SIGTERM\n"
    assert stat.S_IMODE(handle.log_path.stat().st_mode) == 0o600
    assert handle.alive() is not None
    assert "stopped on SIGTERM" in handle.log_tail()
    handle.stop()
    assert [what for what, _ in engine.journal] == ["stop", "logs", "remove"]


def test_stop_still_saves_and_removes_when_the_container_already_exited(
    tmp_path: Path, ready_probes: list[tuple[str, Any]]
) -> None:
    engine = FakeEngine(images={LOCAL_IMAGE})
    handle = make(engine).start(spec(tmp_path))
    engine.containers_[0].status = "exited"
    handle.stop()
    assert engine.containers_ == []
    assert handle.log_path.read_bytes().startswith(b"ready")


# --- failures ------------------------------------------------------------------------------


def test_container_exiting_at_startup_raises_with_log_tail_and_is_removed(tmp_path: Path) -> None:
    engine = FakeEngine(images={LOCAL_IMAGE})
    engine.exit_on_start = 2
    engine.output_on_exit = b"Traceback...\nValueError: bad SERIAL_MODE\n"
    with pytest.raises(ProcessDied) as info:
        make(engine).start(spec(tmp_path))
    text = str(info.value)
    assert "exit code 2" in text
    assert "ValueError: bad SERIAL_MODE" in text
    assert engine.containers_ == []
    ops = [what for what, _ in engine.journal]
    assert ops.index("logs") < ops.index("remove")
    assert b"bad SERIAL_MODE" in (tmp_path / "sx1" / "i0" / "emulator.log").read_bytes()


def test_missing_image_says_how_to_build_or_pull(tmp_path: Path) -> None:
    engine = FakeEngine(images=set())
    with pytest.raises(PrerequisiteMissing) as local:
        make(engine).check()
    assert "harness image build" in local.value.fix
    with pytest.raises(PrerequisiteMissing) as upstream:
        DockerBackend(UPSTREAM_IMAGE, lambda: engine, use_reaper=False).check()
    assert f"docker pull {UPSTREAM_IMAGE}" in upstream.value.fix
    assert "harness image build" in upstream.value.fix
    with pytest.raises(PrerequisiteMissing):
        make(engine).start(spec(tmp_path))


def test_unreachable_engine_says_how_to_start_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)

    def refuse() -> Any:
        raise DockerException("Error while fetching server API version: connection refused")

    with pytest.raises(PrerequisiteMissing) as info:
        DockerBackend(LOCAL_IMAGE, refuse).check()
    assert "scripts/start-dockerd" in info.value.fix
    assert "unix:///var/run/docker.sock" in info.value.what


def test_stop_goes_on_when_the_engine_is_gone_and_reports_every_step(
    tmp_path: Path, ready_probes: list[tuple[str, Any]]
) -> None:
    engine = FakeEngine(images={LOCAL_IMAGE})
    handle = make(engine).start(spec(tmp_path))
    container = engine.containers_[0]

    def gone(*_args: Any, **_kwargs: Any) -> Any:
        engine.journal.append(("refused", container.short_id))
        raise requests.exceptions.ConnectionError("engine socket refused")

    container.stop = gone  # type: ignore[method-assign]
    container.logs = gone  # type: ignore[method-assign]
    container.remove = gone  # type: ignore[method-assign]
    engine.journal.clear()
    with pytest.raises(TeardownErrors) as info:
        handle.stop()
    assert len(info.value.errors) == 3
    assert [what for what, _ in engine.journal] == ["refused"] * 3
    assert "evse-sx1-0" in str(info.value)
    assert "remove" in str(info.value)
