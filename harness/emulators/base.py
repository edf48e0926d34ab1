"""What every emulator backend provides to a pair.

A backend turns an ``EmulatorSpec`` into a started ``EmulatorHandle``. The handle serves
RAPI over TCP on ``rapi_host:rapi_port`` and the upstream control API at ``web_url``
(evse.md §6), both reachable from this host on 127.0.0.1 only."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class EmulatorSpec:
    """Everything a backend needs to start one emulator."""

    instance: str  # e.g. "evse-a1b2c3-0": used in names, labels and errors
    index: int
    session: str
    run_dir: Path  # private per-instance directory (0700); logs go here
    labels: dict[str, str] = field(default_factory=dict)
    trace_path: Path | None = None  # RAPI trace (JSON lines) when the backend supports it
    startup_timeout: float = 20.0


class EmulatorHandle(Protocol):
    """One running emulator."""

    spec: EmulatorSpec

    @property
    def web_url(self) -> str:
        """Base URL of the control API, e.g. ``http://127.0.0.1:40123``."""
        ...

    @property
    def rapi_host(self) -> str: ...

    @property
    def rapi_port(self) -> int: ...

    @property
    def log_path(self) -> Path:
        """Where the emulator's output is kept (also after it stopped)."""
        ...

    def describe(self) -> str:
        """One line for tables and errors, e.g. ``process pid 1234`` or ``container 3f2a…``."""
        ...

    def alive(self) -> str | None:
        """None while running, else how it ended (exit code / container state)."""
        ...

    def stop(self, timeout: float = 3.0) -> None:
        """Stop and release everything; idempotent; keeps the log."""
        ...


class EmulatorBackend(Protocol):
    """A way to run emulators (``process`` or ``docker``)."""

    name: str

    def check(self) -> None:
        """Raise ``PrerequisiteMissing`` with a fix when this backend cannot run here."""
        ...

    def start(self, spec: EmulatorSpec) -> EmulatorHandle:
        """Start one emulator and return once its control API and RAPI port answer.

        On failure everything started is removed before the error propagates."""
        ...


class ControllerFaults:
    """The controller faults of a handle (docs/faults.md), the same on every backend;
    ``harness.faults`` does the backend's part (a process restarted on its ports, a container
    replaced by one on the same host ports)."""

    def kill_and_wait(self, timeout: float = 5.0) -> None:
        from harness.faults import stop_emulator

        stop_emulator(self, kill=True, timeout=timeout)

    def stopped(self, *, kill: bool = False) -> AbstractContextManager[Any]:
        """Gone inside the block (SIGKILL with ``kill=True``), back on the same ports after it."""
        from harness.faults import emulator_stopped

        return emulator_stopped(self, kill=kill)

    def restart(self, *, kill: bool = False) -> None:
        with self.stopped(kill=kill):
            pass

    def reboot(self) -> None:
        """Controller reboot: ``POST /api/evse/reset`` sends ``$AB`` (evse.md §6)."""
        from harness.faults import reboot_emulator

        reboot_emulator(self)
