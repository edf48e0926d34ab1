"""The serial bridge: a PTY the firmware opens as its RAPI port, relayed to the emulator's TCP.

Two implementations with one interface (``SerialBridge``):

- ``SocatBridge``: ``socat -d -d PTY,link=<inst>/rapi.pty,rawer,wait-slave,pty-interval=0.01
  TCP:127.0.0.1:<rapi>`` (engineering.md §3.2). With ``wait-slave`` socat creates the link at
  once but connects TCP only after the firmware opens the slave, so readiness before the
  firmware starts is "link exists and socat alive"; "starting data transfer loop" in its log
  follows once the firmware is up. ``pty-interval`` (default 1 s) is how often socat polls for
  the slave: at 1 s the firmware's first RAPI request could time out (firmware.md §5.4).
  socat exits when the slave closes (upstream W8), and the firmware opens its PTY exactly
  once, so the bridge is supervised: an unexpected exit is logged and socat restarted, and
  ``recycle()`` gives a restarted firmware a fresh socat and link.
- ``harness.fault_bridge.FaultBridge``: an in-process PTY⇄TCP relay for machines without
  socat (``HARNESS_BRIDGE=python``) and for link faults. It keeps the slave open itself, so a
  firmware restart just works, and traces every RAPI frame (docs/faults.md).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from harness.procs import ManagedProcess, SpawnHook
from harness.waiting import NotYet, wait_until


class SerialBridge(Protocol):
    kind: str
    link: Path
    log_path: Path

    def start(self) -> None: ...
    def recycle(self) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def alive(self) -> str | None: ...
    def pid(self) -> int | None: ...
    def describe(self) -> str: ...


def _append(path: Path, line: str) -> None:
    with path.open("a") as fh:
        fh.write(f"# harness {time.strftime('%H:%M:%S')} {line}\n")


def replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


class SocatBridge:
    """socat, supervised: restarted when it exits while the pair is up."""

    kind = "socat"

    def __init__(
        self,
        *,
        instance: str,
        link: Path,
        rapi_host: str,
        rapi_port: int,
        log_path: Path,
        timeout: float = 5.0,
        on_spawn: SpawnHook | None = None,
        on_exit: Callable[[], None] | None = None,
        socat: str = "socat",
    ) -> None:
        self.instance = instance
        self.link = link
        self.log_path = log_path
        self.timeout = timeout
        self.argv = [
            socat,
            "-d",
            "-d",
            "-x",  # hex dump of every transfer: harness.trace.SocatDumpTracer reads it
            f"PTY,link={link},rawer,wait-slave,pty-interval=0.01",
            f"TCP:{rapi_host}:{rapi_port}",
        ]
        self._on_spawn = on_spawn
        self._on_exit = on_exit
        self._proc: ManagedProcess | None = None
        self._want = False
        self._cond = threading.Condition()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0  # unexpected exits that were restarted

    def _spawn_locked(self) -> ManagedProcess:
        # A SIGKILLed socat leaves a dangling link; ours only, inside our private dir.
        if self.link.is_symlink():
            self.link.unlink()
        proc = ManagedProcess(
            f"{self.instance} bridge",
            self.argv,
            log_path=self.log_path,
            on_spawn=self._on_spawn,
            on_exit=self._on_exit,
        ).start()
        self._proc = proc
        self._cond.notify_all()
        return proc

    def _wait_link(self, proc: ManagedProcess) -> None:
        def check(_: float) -> bool:
            if not self.link.is_symlink():
                raise NotYet(f"{self.link} does not exist yet")
            return True

        wait_until(
            check,
            instance=self.instance,
            what="socat PTY link",
            timeout=self.timeout,
            alive=proc.alive,
            log_tail=proc.log_tail,
        )

    def start(self) -> None:
        with self._cond:
            self._want = True
            proc = self._spawn_locked()
        self._wait_link(proc)
        if self._supervisor is None:
            self._supervisor = threading.Thread(
                target=self._supervise, name=f"{self.instance}-bridge-supervisor", daemon=True
            )
            self._supervisor.start()

    def recycle(self) -> None:
        """A fresh socat and link for the next firmware run (the old one saw the slave close)."""
        with self._cond:
            old, self._proc = self._proc, None
        if old is not None:
            old.stop(2.0)
        with self._cond:
            if not self._want:
                return
            proc = self._spawn_locked()
        self._wait_link(proc)

    def _supervise(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while self._want and self._proc is None:
                    self._cond.wait()
                if not self._want:
                    return
                proc = self._proc
            assert proc is not None
            started = time.monotonic()
            with contextlib.suppress(Exception):
                proc.wait()
                proc.stop()  # already exited: reaps it and drops it from the state file
            with self._cond:
                if not self._wanted() or proc is not self._proc:
                    continue
                self._proc = None
            failures = failures + 1 if time.monotonic() - started < 1.0 else 1
            self.restarts += 1
            delay = min(2.0, 0.05 * 2 ** min(failures, 6))
            _append(self.log_path, f"socat exited ({proc.alive()}); restarting in {delay:.2f}s")
            with self._cond:
                self._cond.wait(delay)  # woken early by stop()
                if self._wanted() and self._proc is None:
                    with contextlib.suppress(Exception):
                        self._spawn_locked()

    def _wanted(self) -> bool:
        """Re-read under the lock (another thread changes it; a method defeats narrowing)."""
        return self._want

    def transfer_started(self) -> bool:
        """socat's "starting data transfer loop": TCP connected and the slave is open."""
        proc = self._proc
        return proc is not None and "starting data transfer loop" in proc.log_since_start()

    def stop(self) -> None:
        with self._cond:
            self._want = False
            proc, self._proc = self._proc, None
            self._cond.notify_all()
        if proc is not None:
            proc.stop(2.0)
        if self._supervisor is not None:
            self._supervisor.join(5.0)
            self._supervisor = None
        if self.link.is_symlink():
            self.link.unlink()

    def kill(self) -> None:
        with self._cond:
            self._want = False
            self._cond.notify_all()
            proc = self._proc
        if proc is not None:
            proc.kill()

    def alive(self) -> str | None:
        proc = self._proc
        return "socat not running" if proc is None else proc.alive()

    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def log_tail(self, lines: int = 60) -> str:
        from harness.waiting import tail

        return tail(self.log_path, lines)

    def describe(self) -> str:
        return f"socat pid {self.pid()}"
