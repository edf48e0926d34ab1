"""The firmware under test (real native build or the stand-in), with staged readiness.

Launch exactly as firmware.md §5.2 documents: ``PROGRAM --rapi-serial PTY --set-config
www_http_port=P --set-config hostname=H``, env ``OPENEVSE_CHIP_ID``, cwd = the instance's
private state dir (restarts keep it, so config survives). Readiness (engineering.md §2.c,
firmware.md §5.4): process alive → ``Server started`` in its log or ``GET /config`` 200 →
``/status.state != 0`` (the EVSE link; HTTP is up long before it, upstream W17)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import requests

from harness.errors import HarnessError
from harness.http import plain_get
from harness.procs import ManagedProcess, SpawnHook
from harness.waiting import Backoff, NotYet, wait_until

SERVER_STARTED = "Server started"
# Polling loopback HTTP is cheap; a short cap keeps readiness within ~0.1 s of the fact.
POLL = Backoff(initial=0.01, factor=1.4, cap=0.1)

Alive = Callable[[], str | None]


class PortConflict(HarnessError):
    """Our HTTP port answers, but not with our firmware: retry on another port."""


class Firmware:
    """One firmware process; ``start()`` only spawns, the ``wait_*`` methods are the stages."""

    def __init__(
        self,
        *,
        instance: str,
        argv: Sequence[str],
        pty_path: Path,
        http_port: int,
        hostname: str,
        chip_id: int,
        cwd: Path,
        log_path: Path,
        extra_env: Mapping[str, str] | None = None,
        on_spawn: SpawnHook | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.instance = instance
        self.base_argv = list(argv)
        self.pty_path = pty_path
        self.http_port = http_port
        self.hostname = hostname
        self.chip_id = chip_id
        self.cwd = cwd
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self._on_spawn = on_spawn
        self._on_exit = on_exit
        self.proc: ManagedProcess | None = None
        self.starts = 0
        # Set by the pair: start again and wait until ready (bridge recycle, HTTP, EVSE link).
        self.restart_hook: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def argv(self) -> list[str]:
        return [
            *self.base_argv,
            "--rapi-serial", str(self.pty_path),
            "--set-config", f"www_http_port={self.http_port}",
            "--set-config", f"hostname={self.hostname}",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAPI_SERIAL_PORT", None)  # the flag decides; a stray env must not
        env["OPENEVSE_CHIP_ID"] = f"0x{self.chip_id:016X}"
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.proc = ManagedProcess(
            f"{self.instance} firmware",
            self.argv(),
            log_path=self.log_path,
            cwd=self.cwd,
            env=self.env(),
            on_spawn=self._on_spawn,
            on_exit=self._on_exit,
        ).start()
        self.starts += 1

    def alive(self) -> str | None:
        return "not started" if self.proc is None else self.proc.alive()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_tail(self, lines: int = 60) -> str:
        from harness.waiting import tail

        return tail(self.log_path, lines)

    def _proc(self) -> ManagedProcess:
        if self.proc is None:
            raise RuntimeError(f"{self.instance}: firmware not started")
        return self.proc

    def wait_http(self, timeout: float, *, alive: Alive | None = None) -> None:
        """Stage 2: `Server started` printed, or `GET /config` answers 200 (whichever first:
        a build that prints no banner still passes on HTTP)."""
        proc = self._proc()

        def check(remaining: float) -> bool:
            # The banner alone is not enough (the listener follows it by ms), and a 200 alone
            # is not either: another run's firmware may hold the port while ours failed to bind.
            # `/config.hostname` is unique per run, so it proves the answer is ours.
            config = _get(self.url, "/config", remaining).json()
            answered = config.get("hostname") if isinstance(config, dict) else None
            if answered != self.hostname:
                raise PortConflict(
                    f"[{self.instance}] port {self.http_port} is answered by another process "
                    f"(hostname {answered!r}, expected {self.hostname!r})"
                )
            return True

        wait_until(
            check,
            instance=self.instance,
            what=f"firmware HTTP (`{SERVER_STARTED}` / GET {self.url}/config 200)",
            timeout=timeout,
            alive=alive or proc.alive,
            log_tail=proc.log_tail,
            backoff=POLL,
        )

    def wait_evse_link(
        self, timeout: float, *, alive: Alive | None = None, log_tail: Callable[[], str] | None = None
    ) -> dict[str, Any]:
        """Stage 3: `/status.state != 0`, i.e. the firmware has heard from the EVSE over RAPI.

        ``log_tail`` lets the pair add the bridge's and emulator's logs: a dead link is as
        often their story as the firmware's."""
        proc = self._proc()

        def check(remaining: float) -> dict[str, Any]:
            status = _get(self.url, "/status", remaining).json()
            if not isinstance(status, dict):
                raise NotYet(f"/status is not an object: {status!r:.80}")
            if status.get("state", 0) == 0:
                raise NotYet(f"/status.state is 0 (rapi_connected={status.get('rapi_connected')})")
            return status

        result: dict[str, Any] = wait_until(
            check,
            instance=self.instance,
            what=f"EVSE link (GET {self.url}/status .state != 0)",
            timeout=timeout,
            alive=alive or proc.alive,
            log_tail=log_tail or proc.log_tail,
            backoff=POLL,
        )
        return result

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None:
            self.proc.stop(timeout)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    # ---- process faults (docs/faults.md) ------------------------------------------------

    def kill_and_wait(self, timeout: float = 5.0) -> None:
        """SIGKILL (a crash: no clean shutdown) and wait until the process is gone."""
        from harness.faults import kill_process

        kill_process(self.proc, f"[{self.instance}] firmware", timeout)

    def stopped(self, *, kill: bool = False) -> AbstractContextManager[None]:
        """Down inside the block (SIGKILL with ``kill=True``, else SIGTERM); started again,
        fully ready, after it, also on an exception."""
        from harness.faults import FaultError, process_stopped

        if self.restart_hook is None:
            raise FaultError(f"[{self.instance}] firmware restarts need its pair (pair.firmware)")
        stop = self.kill_and_wait if kill else self.stop
        return process_stopped(stop, self.restart_hook)

    def restart(self, *, kill: bool = False) -> None:
        with self.stopped(kill=kill):
            pass

    def describe(self) -> str:
        return f"pid {self.pid}"


def _get(base: str, path: str, remaining: float) -> requests.Response:
    try:
        resp = plain_get(f"{base}{path}", timeout=min(2.0, max(0.1, remaining)))
    except requests.RequestException as exc:
        raise NotYet(f"GET {path}: {type(exc).__name__}") from exc
    if resp.status_code != 200:
        raise NotYet(f"GET {path}: HTTP {resp.status_code}")
    return resp
