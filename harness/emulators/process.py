"""Emulators as local processes (the default backend).

Our emulator (docs/architecture.md, "Emulator process contract") takes port 0 for both
listeners and prints one JSON ready line naming the ports the kernel chose: no port race at
all. Any other command (``HARNESS_EMULATOR_CMD``) is treated as upstream-compatible: it gets
fixed ports from the allocator through the upstream flags and is polled on
``GET /api/status`` (evse.md §6); a ready line, if it prints one, is honoured as well."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from harness.emulators.base import ControllerFaults, EmulatorSpec
from harness.errors import PrerequisiteMissing, ProcessDied
from harness.http import plain_get
from harness.ports import PortAllocator, PortLease, looks_like_address_in_use
from harness.procs import ManagedProcess
from harness.settings import Settings
from harness.waiting import Backoff, NotYet, wait_until

READY_EVENT = "ready"
POLL = Backoff(initial=0.01, factor=1.4, cap=0.1)
ADDRESS_RETRIES = 3


def find_ready_line(text: str) -> dict[str, Any] | None:
    """The emulator's `{"event": "ready", ...}` line in (interleaved) log text."""
    for line in text.splitlines():
        start = line.find("{")
        if start < 0 or '"event"' not in line:
            continue
        try:
            data = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("event") == READY_EVENT:
            return data
    return None


class ProcessEmulator(ControllerFaults):
    """One emulator process (implements ``EmulatorHandle``)."""

    def __init__(self, spec: EmulatorSpec, proc: ManagedProcess, leases: list[PortLease]) -> None:
        self.spec = spec
        self.proc = proc
        self._leases = leases
        self._web_port = 0
        self._rapi_port = 0
        # Set by the pair: raises when the link could not survive the controller going away
        # (a socat bridge ends with its TCP connection; docs/faults.md).
        self.stop_guard: Callable[[], None] | None = None

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self._web_port}"

    @property
    def web_port(self) -> int:
        return self._web_port

    @property
    def rapi_host(self) -> str:
        return "127.0.0.1"

    @property
    def rapi_port(self) -> int:
        return self._rapi_port

    @property
    def log_path(self) -> Path:
        return self.proc.log_path

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def describe(self) -> str:
        return f"process pid {self.proc.pid}"

    def alive(self) -> str | None:
        return self.proc.alive()

    def stop(self, timeout: float = 3.0) -> None:
        try:
            self.proc.stop(timeout)
        finally:
            for lease in self._leases:
                lease.release()

    def kill(self) -> None:
        self.proc.kill()


class ProcessBackend:
    """Runs ``settings.emulator_argv`` per instance."""

    name = "process"

    def __init__(
        self,
        settings: Settings,
        *,
        ports: PortAllocator | None = None,
        on_spawn: Callable[[str, int], None] | None = None,
        on_exit: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ports = ports
        self._on_spawn = on_spawn
        self._on_exit = on_exit

    def check(self) -> None:
        exe = self.settings.emulator_argv[0]
        if not (shutil.which(exe) or Path(exe).is_file()):
            raise PrerequisiteMissing(
                f"emulator command {exe!r} not found", "fix HARNESS_EMULATOR_CMD or unset it"
            )

    def start(self, spec: EmulatorSpec) -> ProcessEmulator:
        last: ProcessDied | None = None
        for _ in range(ADDRESS_RETRIES):
            try:
                return self._start_once(spec)
            except ProcessDied as exc:
                # Only a fixed port taken after our probe is worth another try (§2.a).
                if not looks_like_address_in_use(exc.log_tail or ""):
                    raise
                last = exc
        assert last is not None
        raise last

    def _start_once(self, spec: EmulatorSpec) -> ProcessEmulator:
        argv = list(self.settings.emulator_argv)
        leases: list[PortLease] = []
        ours = self.settings.emulator_is_ours
        if ours:
            argv += ["--serial-tcp-port", "0", "--web-port", "0"]
            if spec.trace_path is not None:
                argv += ["--trace", str(spec.trace_path)]
        else:
            if self.ports is None:
                raise PrerequisiteMissing("a custom emulator needs fixed ports", "pass a PortAllocator")
            web = self.ports.acquire()
            rapi = self.ports.acquire(avoid={web.port})
            leases = [web, rapi]
            argv += [
                "--serial-mode", "tcp",
                "--serial-tcp-port", str(rapi.port),
                "--web-host", "127.0.0.1",
                "--web-port", str(web.port),
            ]  # fmt: skip
        key = f"{spec.instance}/emulator"
        spawned, exited = self._on_spawn, self._on_exit
        proc = ManagedProcess(
            f"{spec.instance} emulator",
            argv,
            log_path=spec.run_dir / "emulator.log",
            cwd=spec.run_dir,
            on_spawn=(lambda pid: spawned(key, pid)) if spawned else None,
            on_exit=(lambda: exited(key)) if exited else None,
        )
        handle = ProcessEmulator(spec, proc, leases)
        try:
            proc.start()
            if ours:
                ready = wait_until(
                    lambda _r: find_ready_line(proc.log_since_start()),
                    instance=spec.instance,
                    what="emulator ready line",
                    timeout=spec.startup_timeout,
                    alive=proc.alive,
                    log_tail=proc.log_tail,
                    backoff=POLL,
                )
                handle._web_port = int(ready["web_port"])
                handle._rapi_port = int(ready["rapi_port"])
            else:
                handle._web_port, handle._rapi_port = leases[0].port, leases[1].port
            wait_until(
                lambda remaining: _api_status_ok(handle.web_url, remaining),
                instance=spec.instance,
                what=f"emulator GET {handle.web_url}/api/status",
                timeout=spec.startup_timeout,
                alive=proc.alive,
                log_tail=proc.log_tail,
                backoff=POLL,
            )
        except BaseException:
            handle.stop()
            raise
        return handle


def _api_status_ok(url: str, remaining: float) -> bool:
    try:
        resp = plain_get(f"{url}/api/status", timeout=min(2.0, remaining))
    except requests.RequestException as exc:
        raise NotYet(f"{type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise NotYet(f"HTTP {resp.status_code}")
    return True
