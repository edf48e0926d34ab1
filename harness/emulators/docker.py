"""The Docker backend: each emulator in its own container on a real Docker engine.

What it fixes compared to upstream's fixture (upstream-harness.md A4, W2, W3, W6, W9, W15):
ports are published on 127.0.0.1 only and Docker chooses the host ports (read back after
``reload()``, so no port races); every container carries our labels, and clean-up selects
by our session label only; containers are not auto-removed, so ``stop()`` can save the log
into the run dir before removing the container; a reaper process removes the session's
containers if this process dies (``harness.docker.reaper``); a missing engine or image is a
``PrerequisiteMissing`` with the fix, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from harness.docker import labels as L
from harness.docker.engine import ClientFactory, connect, default_client, engine_unreachable, image_missing
from harness.docker.names import IMAGE_ENV, UPSTREAM_IMAGE
from harness.emulators.base import ControllerFaults, EmulatorSpec
from harness.errors import HarnessError, TeardownErrors
from harness.waiting import NotYet, tail, wait_until

# Ports inside the container: upstream's defaults, fixed because each container has its own
# network namespace. The host ports are Docker's choice.
WEB_PORT = 8080
RAPI_PORT = 8023
WEB_KEY = f"{WEB_PORT}/tcp"
RAPI_KEY = f"{RAPI_PORT}/tcp"
HOST_IP = "127.0.0.1"
LOG_TAIL_LINES = 40
RAPI_PROBE = b"$GV^35\r"


def container_environment() -> dict[str, str]:
    """Environment of an emulator container (upstream names, evse.md §6)."""
    return {
        "SERIAL_MODE": "tcp",
        "SERIAL_TCP_PORT": str(RAPI_PORT),
        "WEB_PORT": str(WEB_PORT),
        # 0.0.0.0 here is inside the container's own network namespace: its loopback and its
        # veth on Docker's host-local bridge, nothing on the host's interfaces. The way in
        # from the host is the publication below, bound to 127.0.0.1 only. (Our emulator's
        # own default, 127.0.0.1, would be the container's loopback, which the published
        # ports cannot reach.)
        "WEB_HOST": "0.0.0.0",  # noqa: S104
        "RAPI_HOST": "0.0.0.0",  # noqa: S104
        "PYTHONUNBUFFERED": "1",
    }


def published_port(ports: dict[str, Any] | None, key: str) -> int | None:
    """The host port Docker published ``key`` on at 127.0.0.1, from ``container.ports``.

    None while not (yet) published. A binding on any other address is an error: we asked
    for 127.0.0.1 only, and must not hand out a port that listens more widely."""
    bindings = (ports or {}).get(key)
    if not bindings:
        return None
    for binding in bindings:
        if binding.get("HostIp") != HOST_IP:
            raise HarnessError(f"{key} is published on {binding.get('HostIp')!r}, expected {HOST_IP} only")
    return int(bindings[0]["HostPort"])


def container_name(instance: str) -> str:
    """A readable, valid container name (unique: the instance carries the session id)."""
    return "openevse-harness-" + re.sub(r"[^A-Za-z0-9_.-]", "-", instance)


def rapi_answers(port: int, timeout: float) -> bool:
    """Whether a RAPI server answers ``$GV`` on 127.0.0.1:port.

    A TCP accept alone proves nothing here: docker-proxy accepts on the published port even
    while nothing listens in the container, and then closes the connection."""
    with socket.create_connection((HOST_IP, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(RAPI_PROBE)
        data = b""
        while len(data) <= 4096:
            chunk = sock.recv(256)
            if not chunk:
                raise NotYet(f"RAPI port {port} closed the connection without a reply")
            data += chunk
            # Complete lines only; asynchronous notices ($AT, $AB) may come first.
            lines = data.replace(b"\n", b"\r").split(b"\r")[:-1]
            if any(line.strip().startswith((b"$OK", b"$NK")) for line in lines):
                return True
        raise NotYet(f"RAPI port {port} sent {len(data)} bytes without $OK/$NK")


# Never through an http_proxy from the environment: the target is our own 127.0.0.1 port.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status_ok(url: str, timeout: float) -> bool:
    try:
        with _DIRECT.open(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise NotYet(f"GET {url} -> {resp.status}")
            return True
    except urllib.error.HTTPError as exc:
        raise NotYet(f"GET {url} -> {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise NotYet(f"GET {url}: {exc.reason}") from exc


class _Reaper:
    """One reaper process per session in this process, alive while the session has containers."""

    def __init__(self, session: str, log_path: Path) -> None:
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = dict(os.environ)
        # The reaper imports this package: make that work from a source checkout too.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.docker.reaper", "--session", session],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.users = 0

    def close(self, timeout: float = 10.0) -> None:
        """Close the pipe (the reaper sweeps, finds nothing, exits) and reap the process."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# Shared by every DockerBackend in this process: a reaper sweeps its whole session when its
# pipe closes, so two backends of one session must share it, not close it under each other.
_REAPERS: dict[str, _Reaper] = {}
_REAPERS_LOCK = threading.Lock()


class DockerEmulatorHandle(ControllerFaults):
    """One running emulator container."""

    def __init__(
        self, spec: EmulatorSpec, container: Container, backend: DockerBackend, log_path: Path
    ) -> None:
        self.spec = spec
        self.container = container
        self._backend = backend
        self._log_path = log_path
        self._web_port: int | None = None
        self._rapi_port: int | None = None
        self._stopped = False
        self._halted = False  # stopped for a fault (``halt``), to be replaced by ``resume``
        self._lock = threading.Lock()
        # Set by the pair (as on the process backend): ``stop_guard`` refuses a halt its bridge
        # cannot survive; ``on_replaced(old_id, new_id)`` keeps the session's state file right.
        self.stop_guard: Callable[[], None] | None = None
        self.on_replaced: Callable[[str, str], None] | None = None

    @property
    def web_url(self) -> str:
        return f"http://{HOST_IP}:{self.web_port}"

    @property
    def web_port(self) -> int:
        if self._web_port is None:
            raise HarnessError(f"[{self.spec.instance}] web port not published yet")
        return self._web_port

    @property
    def rapi_host(self) -> str:
        return HOST_IP

    @property
    def rapi_port(self) -> int:
        if self._rapi_port is None:
            raise HarnessError(f"[{self.spec.instance}] RAPI port not published yet")
        return self._rapi_port

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def short_id(self) -> str:
        return str(self.container.short_id)

    def describe(self) -> str:
        return f"container {self.short_id}"

    def read_ports(self) -> bool:
        """Read the published host ports back from the engine; True once both are known."""
        self.container.reload()
        self._web_port = published_port(self.container.ports, WEB_KEY)
        self._rapi_port = published_port(self.container.ports, RAPI_KEY)
        return self._web_port is not None and self._rapi_port is not None

    def alive(self) -> str | None:
        if self._stopped:
            return "stopped by the harness"
        if self._halted:
            return f"container {self.short_id} stopped for a fault (resume() brings a new one)"
        try:
            self.container.reload()
        except NotFound:
            return f"container {self.short_id} was removed"
        state = self.container.attrs.get("State", {})
        if state.get("Status") == "running":
            return None
        return f"container {self.short_id} {state.get('Status')}, exit code {state.get('ExitCode')}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the container's output (from the saved file once stopped)."""
        if self._stopped or not self._backend_has_container():
            return tail(self._log_path, lines)
        try:
            raw = self.container.logs(stdout=True, stderr=True, tail=lines)
        except Exception as exc:  # a log tail is best effort inside an error message
            return f"(container logs unavailable: {exc})"
        return bytes(raw).decode("utf-8", "replace")

    def _backend_has_container(self) -> bool:
        try:
            self.container.reload()
        except NotFound:
            return False
        except Exception:  # engine trouble: let logs() report it
            return True
        return True

    def save_logs(self) -> None:
        """Write the container's whole output into the run dir (0600)."""
        raw = self.container.logs(stdout=True, stderr=True, timestamps=True)
        # Append: the output of containers replaced after a fault (``resume``) is already there.
        fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(bytes(raw))

    # ---- process faults (docs/faults.md) ------------------------------------------------
    #
    # A stopped container comes back with new ephemeral host ports (Docker allocates them at
    # every start), which would strand the bridge and every URL handed out. So ``resume``
    # replaces the container by a new one from the same image with the same host ports
    # pinned: a fresh controller (it sends ``$AB`` to its first client), like a restarted
    # emulator process.

    def halt(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Power loss (``kill``: SIGKILL) or a clean stop (SIGTERM); the container is kept for
        its log until ``resume`` or ``stop``."""
        from harness.faults import FaultError

        name = self.spec.instance
        if self._stopped or self._halted:
            raise FaultError(f"[{name}] emulator {self.describe()} is not running: nothing to stop")
        try:
            if kill:
                self.container.kill()
            else:
                self.container.stop(timeout=max(1, round(timeout)))
            self.container.wait(timeout=timeout)
        except Exception as exc:
            what = f"could not stop {self.describe()} within {timeout:.1f}s"
            raise FaultError(f"[{name}] {what}: {exc}") from exc
        self._halted = True

    def resume(self, timeout: float | None = None) -> None:
        """A new container on the same host ports; returns once its RAPI and API answer."""
        from harness.faults import FaultError

        name = self.spec.instance
        if not self._halted:
            raise FaultError(f"[{name}] emulator {self.describe()} was not stopped for a fault")
        web, rapi = self.web_port, self.rapi_port
        old = self.container
        self._keep_logs(old)
        with contextlib.suppress(NotFound):
            old.remove(force=True)
        new = self._backend.recreate(self.spec, old.labels, web_port=web, rapi_port=rapi)
        self.container = new
        self._halted = False
        if self.on_replaced is not None:
            self.on_replaced(str(old.id), str(new.id))
        try:
            new.start()
        except (APIError, DockerException) as exc:
            raise FaultError(
                f"[{name}] the new container {new.short_id} could not take ports web {web} / RAPI "
                f"{rapi} again (something else bound them while the EVSE was down?): {exc}"
            ) from exc
        self._backend.wait_ready(self, timeout)
        if (self.web_port, self.rapi_port) != (web, rapi):
            raise FaultError(f"[{name}] emulator came back on other ports: {self.web_port}/{self.rapi_port}")

    def _keep_logs(self, container: Container) -> None:
        """Append a replaced container's output to the run dir's log (0600)."""
        with contextlib.suppress(NotFound, APIError):
            raw = bytes(container.logs(stdout=True, stderr=True, timestamps=True))
            fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "ab") as fh:
                fh.write(f"# harness: container {container.short_id} (stopped for a fault)\n".encode())
                fh.write(raw)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop, save the log, remove; idempotent; every step runs even after a failure."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        errors: list[BaseException] = []

        def step(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except NotFound:
                pass  # already gone: nothing left to do for this step
            except Exception as exc:  # e.g. the engine went away: go on, report at the end
                errors.append(HarnessError(f"[{self.spec.instance}] {self.describe()}: {what}: {exc}"))

        # The engine's stop timeout is whole seconds; the emulator exits within 1 s of SIGTERM.
        step("stop", lambda: self.container.stop(timeout=max(1, round(timeout))))
        step(f"save logs to {self._log_path}", self.save_logs)  # before remove: it deletes them
        step("remove", lambda: self.container.remove(force=True))
        self._backend._release(self.spec.session)
        if errors:
            raise TeardownErrors(errors)


class DockerBackend:
    """Runs emulators as containers; see the module docstring."""

    name = "docker"

    def __init__(
        self,
        image: str | None = None,
        client_factory: ClientFactory = default_client,
        *,
        command: Sequence[str] | None = None,
        run_id: str | None = None,
        use_reaper: bool = True,
    ) -> None:
        """``image`` defaults to $HARNESS_EMULATOR_IMAGE, else the pinned upstream image.

        ``command`` overrides the image's CMD (tests use it to make a container fail);
        ``client_factory`` is injectable so unit tests can pass a fake engine."""
        self.image = image or os.environ.get(IMAGE_ENV) or UPSTREAM_IMAGE
        self._client_factory = client_factory
        self._client: Any = None
        self.command = list(command) if command is not None else None
        self.run_id = run_id
        self.use_reaper = use_reaper
        self._lock = threading.Lock()
        self._reapers = _REAPERS

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = connect(self._client_factory)
            return self._client

    def check(self) -> None:
        client = self.client()
        try:
            client.images.get(self.image)
        except ImageNotFound as exc:
            raise image_missing(self.image) from exc
        except (APIError, DockerException, OSError) as exc:
            raise engine_unreachable(exc) from exc

    def _acquire(self, session: str, run_dir: Path) -> None:
        if not self.use_reaper:
            return
        with _REAPERS_LOCK:
            reaper = _REAPERS.get(session)
            if reaper is None or reaper.proc.poll() is not None:
                # Next to the instance dirs: <run root>/sessions/<session>/docker-reaper.log
                reaper = _Reaper(session, run_dir.parent / "docker-reaper.log")
                _REAPERS[session] = reaper
            reaper.users += 1

    def _release(self, session: str) -> None:
        if not self.use_reaper:
            return
        with _REAPERS_LOCK:
            reaper = _REAPERS.get(session)
            if reaper is None:
                return
            reaper.users -= 1
            if reaper.users > 0:
                return
            del _REAPERS[session]
            # Closed under the lock: its final sweep of the session must be over before a new
            # start of the same session can create a container it would remove.
            reaper.close()

    def _remove_leftovers(self, client: Any, spec: EmulatorSpec) -> None:
        """After an interrupted create: remove what the engine may have made for this
        instance, found by our labels (the create call never returned its id)."""
        mine: dict[str, str | list[str] | bool] = {
            "label": [f"{L.SESSION}={spec.session}", f"{L.INSTANCE}={spec.instance}"]
        }
        with contextlib.suppress(APIError, DockerException):
            for container in client.containers.list(all=True, filters=mine, ignore_removed=True):
                with contextlib.suppress(NotFound):
                    container.remove(force=True)

    def start(self, spec: EmulatorSpec) -> DockerEmulatorHandle:
        client = self.client()
        spec.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        labels = L.container_labels(
            session=spec.session,
            run=self.run_id or spec.labels.get(L.RUN) or spec.session,
            instance=spec.instance,
            extra=spec.labels,
        )
        self._acquire(spec.session, spec.run_dir)  # before create: a crash from here on is covered
        try:
            container = self._create(client, spec, labels, web_port=None, rapi_port=None)
        except ImageNotFound as exc:
            self._release(spec.session)
            raise image_missing(self.image) from exc
        except (APIError, DockerException) as exc:
            self._remove_leftovers(client, spec)
            self._release(spec.session)
            raise HarnessError(
                f"[{spec.instance}] could not create a container from {self.image}: {exc}"
            ) from exc
        except BaseException:  # Ctrl-C during the create call
            self._remove_leftovers(client, spec)
            self._release(spec.session)
            raise
        handle = DockerEmulatorHandle(spec, container, self, spec.run_dir / "emulator.log")
        try:
            container.start()
            self.wait_ready(handle)
        except BaseException:
            with contextlib.suppress(HarnessError):
                handle.stop(timeout=1)
            raise
        return handle

    def recreate(
        self, spec: EmulatorSpec, labels: dict[str, str], *, web_port: int, rapi_port: int
    ) -> Container:
        """A new container for ``spec`` with the given host ports pinned (``resume``)."""
        from harness.faults import FaultError

        client = self.client()
        try:
            container = self._create(client, spec, dict(labels), web_port=web_port, rapi_port=rapi_port)
        except BaseException as exc:
            self._remove_leftovers(client, spec)
            if isinstance(exc, (APIError, DockerException)):
                raise FaultError(f"[{spec.instance}] could not create a new container: {exc}") from exc
            raise
        return container

    def _create(
        self,
        client: Any,
        spec: EmulatorSpec,
        labels: dict[str, str],
        *,
        web_port: int | None,
        rapi_port: int | None,
    ) -> Container:
        """Create (not start) the container; host ports None: Docker chooses them."""
        container: Container = client.containers.create(
            self.image,
            command=self.command,
            name=container_name(spec.instance),
            environment=container_environment(),
            ports={WEB_KEY: (HOST_IP, web_port), RAPI_KEY: (HOST_IP, rapi_port)},
            labels=labels,
            detach=True,
            auto_remove=False,
        )
        return container

    def wait_ready(self, handle: DockerEmulatorHandle, timeout: float | None = None) -> None:
        spec = handle.spec

        def ready(remaining: float) -> bool:
            if not handle.read_ports():
                raise NotYet("ports not published yet")
            probe = min(2.0, remaining)
            rapi_answers(handle.rapi_port, probe)
            return http_status_ok(f"{handle.web_url}/api/status", probe)

        wait_until(
            ready,
            instance=spec.instance,
            what=f"emulator {handle.describe()} ({self.image}): RAPI $GV and GET /api/status",
            timeout=spec.startup_timeout if timeout is None else timeout,
            alive=handle.alive,
            log_tail=handle.log_tail,
        )
