"""Real-process fixtures for the firmware stand-in (`native/openevse-sim`).

Every process runs in its own tmp_path cwd with stdout/stderr in files and is stopped in a
finally. Ports come from a private range below the ephemeral range, with a bind check."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "native" / "openevse-sim"
START_TIMEOUT = 15.0  # generous: 2 shared cores; the measured figure is ~0.3 s
LINK_TIMEOUT = 30.0  # `/status.state != 0` over socat + emulator (the harness allows 30 s too)
PORT_RANGE = (21000, 31000)  # below the kernel's ephemeral range (engineering.md §5)

T = TypeVar("T")


def free_port() -> int:
    """A port in the private range that nothing listens on right now (bind check)."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def poll(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `check` until it returns something truthy or `timeout` passes (monotonic)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (requests.RequestException, OSError, ValueError, KeyError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc!r})")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks -> seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def long_id_of(chip: int) -> str:
    octets = [(chip >> (8 * i)) & 0xFF for i in range(6)]
    return f"{octets[0]:x}" + "".join(f"{b:02x}" for b in octets[1:])


@dataclass
class Sim:
    """One running stand-in."""

    cwd: Path
    port: int
    hostname: str
    chip_id: int
    rapi: str
    extra: list[str] = field(default_factory=list)
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started_after: float = 0.0
    cpu_at_start: float = 0.0  # user+system CPU seconds used until `Server started` was seen
    runs: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def long_id(self) -> str:
        return long_id_of(self.chip_id)

    @property
    def stdout(self) -> Path:
        return self.cwd.parent / f"{self.cwd.name}.out.{self.runs}"

    @property
    def stderr(self) -> Path:
        return self.cwd.parent / f"{self.cwd.name}.err.{self.runs}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            str(LAUNCHER),
            "--rapi-serial",
            self.rapi,
            "--set-config",
            f"www_http_port={self.port}",
            "--set-config",
            f"hostname={self.hostname}",
            *self.extra,
        ]

    def start(self) -> Sim:
        self.runs += 1
        env = os.environ.copy()
        env["OPENEVSE_CHIP_ID"] = f"0x{self.chip_id:016X}"
        # Every run on this machine shares the loopback mDNS domain; with the real 20-result cap
        # (firmware.md §2.2) unrelated units could crowd out ours. A test of the cap sets it back.
        env["OPENEVSE_SIM_MAX_RESULTS"] = "1000"
        env.update(self.env_extra)
        self.cwd.mkdir(parents=True, exist_ok=True)
        begin = time.monotonic()
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        deadline = begin + START_TIMEOUT
        while "Server started" not in self.stdout.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise AssertionError(f"stand-in exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no 'Server started' within {START_TIMEOUT} s: {self.log_tail()}")
            time.sleep(0.01)
        self.started_after = time.monotonic() - begin
        self.cpu_at_start = cpu_seconds(self.proc.pid)
        poll(
            lambda: requests.get(self.base + "/config", timeout=2).status_code in (200, 401),
            START_TIMEOUT,
            "GET /config",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        out = self.stdout.read_text(errors="replace")[-1500:] if self.stdout.exists() else ""
        err = self.stderr.read_text(errors="replace")[-1500:] if self.stderr.exists() else ""
        return f"--- stdout ---\n{out}\n--- stderr ---\n{err}"

    # HTTP helpers
    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path, timeout=5, allow_redirects=False)

    def post(self, path: str, body: Any = None, data: bytes | None = None) -> requests.Response:
        if data is not None:
            return requests.post(self.base + path, data=data, timeout=5, allow_redirects=False)
        return requests.post(self.base + path, json=body, timeout=5, allow_redirects=False)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.base + path, timeout=5, allow_redirects=False)

    def peers(self) -> list[dict[str, Any]]:
        response = self.get("/loadsharing/peers")
        assert response.status_code == 200
        rows = response.json()
        assert isinstance(rows, list)
        return rows

    def ls_status(self) -> dict[str, Any]:
        response = self.get("/loadsharing/status")
        assert response.status_code == 200
        doc = response.json()
        assert isinstance(doc, dict)
        return doc


@pytest.fixture
def run_token() -> str:
    """Makes hostnames unique across concurrent runs sharing the loopback mDNS domain."""
    return secrets.token_hex(3)


@pytest.fixture
def sim_factory(tmp_path: Path, run_token: str) -> Iterator[Callable[..., Sim]]:
    """`make(name, rapi=..., extra=[...], env={...}, start=True)` -> a started Sim; all stopped at the end."""
    made: list[Sim] = []

    def make(
        name: str = "a",
        rapi: str | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
    ) -> Sim:
        chip = (random.getrandbits(48) << 16) | random.getrandbits(16) | 0x1
        sim = Sim(
            cwd=tmp_path / f"sim-{name}",
            port=free_port(),
            hostname=f"sim-{run_token}-{name}",
            chip_id=chip,
            rapi=rapi or str(tmp_path / f"no-such-pty-{name}"),
            extra=list(extra or []),
            env_extra=dict(env or {}),
        )
        made.append(sim)
        return sim.start() if start else sim

    try:
        yield make
    finally:
        for sim in made:
            sim.stop()


@dataclass
class EvseRig:
    """An emulator plus a socat PTY bridge, as the harness builds for each pair."""

    emulator: subprocess.Popen[bytes]
    socat: subprocess.Popen[bytes]
    web_port: int
    rapi_port: int
    pty: Path

    def control(self, path: str, body: Any = None) -> requests.Response:
        return requests.post(f"http://127.0.0.1:{self.web_port}{path}", json=body, timeout=5)

    def evse(self) -> dict[str, Any]:
        """The emulator's `GET /api/evse/status` (evse.md §6): state, current_capacity, actual_current…"""
        doc = requests.get(f"http://127.0.0.1:{self.web_port}/api/evse/status", timeout=5).json()
        assert isinstance(doc, dict)
        return doc

    def plug_in_and_charge(self) -> None:
        assert self.control("/api/ev/connect").status_code == 200
        assert self.control("/api/ev/request_charge").status_code == 200


@pytest.fixture
def evse_factory(tmp_path: Path) -> Iterator[Callable[[str], EvseRig]]:
    procs: list[subprocess.Popen[bytes]] = []

    def make(name: str) -> EvseRig:
        out = tmp_path / f"emulator-{name}.out"
        with out.open("wb") as stdout, (tmp_path / f"emulator-{name}.log").open("wb") as stderr:
            emu = subprocess.Popen(
                [sys.executable, "-m", "emulator", "--serial-tcp-port", "0", "--web-port", "0"],
                cwd=REPO,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
            )
        procs.append(emu)
        ready = poll(
            lambda: out.read_text().endswith("\n") and json.loads(out.read_text()), 15, "emulator ready"
        )
        pty = tmp_path / f"rapi-{name}"
        with (tmp_path / f"socat-{name}.log").open("wb") as log:
            socat = subprocess.Popen(
                [
                    "socat",
                    "-d",
                    "-d",
                    f"PTY,link={pty},rawer,wait-slave",
                    f"TCP:127.0.0.1:{ready['rapi_port']}",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        procs.append(socat)
        poll(pty.exists, 10, "socat PTY link")
        return EvseRig(emu, socat, int(ready["web_port"]), int(ready["rapi_port"]), pty)

    try:
        yield make
    finally:
        for proc in reversed(procs):
            stop_process(proc)


@pytest.fixture
def unit_factory(
    sim_factory: Callable[..., Sim], evse_factory: Callable[[str], EvseRig]
) -> Callable[..., tuple[Sim, EvseRig]]:
    """`make(name, extra=[...], env={...})` -> a stand-in linked to its own emulator, `/status.state` != 0."""

    def make(
        name: str, extra: list[str] | None = None, env: dict[str, str] | None = None
    ) -> tuple[Sim, EvseRig]:
        rig = evse_factory(name)
        sim = sim_factory(name, rapi=str(rig.pty), extra=extra, env=env)
        # Generous: a `$GV` lost while socat connects is retried after 10 s (§5.4), more under load.
        poll(lambda: sim.get("/status").json()["state"] != 0, LINK_TIMEOUT, f"{name}: EVSE link up")
        return sim, rig

    return make
