"""Real-process fixtures for the emulator: start ``python -m emulator``, talk RAPI and HTTP.

Each emulator runs with port 0, its stdout/stderr in files under tmp_path; the ready line
is read from the stdout file (docs/architecture.md "Emulator process contract").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

from emulator import rapi

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 15.0  # generous: the machine is shared; the measured figure is ~0.1 s


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]
    ready_after: float  # seconds from spawn to the ready line
    stdout: Path
    stderr: Path

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.ready['web_port']}"

    @property
    def rapi_port(self) -> int:
        return int(self.ready["rapi_port"])

    def post(self, path: str, body: Any = None) -> requests.Response:
        return requests.post(self.web + path, json=body, timeout=5)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.web + path, timeout=5)

    def log_tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-2000:]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def spawn(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Emulator, Callable[[], None]]:
    """Start one emulator; returns it and its stop function (always call it)."""
    tmp.mkdir(parents=True, exist_ok=True)
    stdout, stderr = tmp / "emulator.out", tmp / "emulator.log"
    argv = [sys.executable, "-m", "emulator", "--serial-tcp-port", "0", "--web-port", "0", *args]
    start = time.monotonic()
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=env or os.environ.copy()
        )
    try:
        deadline = start + READY_TIMEOUT
        while True:
            text = stdout.read_text()
            if text.endswith("\n"):
                ready_after = time.monotonic() - start
                break
            if proc.poll() is not None:
                raise AssertionError(
                    f"emulator exited with {proc.returncode} before its ready line; "
                    f"stderr: {stderr.read_text(errors='replace')[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no ready line within {READY_TIMEOUT} s; stderr: {stderr.read_text()}")
            time.sleep(0.005)
        lines = text.splitlines()
        assert len(lines) == 1, f"expected exactly one stdout line, got {lines!r}"
        ready = json.loads(lines[0])
    except BaseException:
        _stop(proc)
        raise
    return Emulator(proc, ready, ready_after, stdout, stderr), lambda: _stop(proc)


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """Factory: ``start_emulator(*flags)``; every emulator started is stopped at teardown."""
    stops: list[Callable[[], None]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Emulator:
        emu, stop = spawn(tmp_path / f"emu{len(stops)}", *args, env=env)
        stops.append(stop)
        return emu

    try:
        yield start
    finally:
        for stop in stops:
            stop()


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator], tmp_path: Path) -> Emulator:
    return start_emulator("--trace", str(tmp_path / "trace.jsonl"))


# ----- a RAPI client like the firmware's RapiSender (firmware.md §6.1) ------------------


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def read(self, timeout: float) -> bytes: ...
    def close(self) -> None: ...


class SocketTransport:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float) -> bytes:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return b""
        if not data:
            raise ConnectionError("emulator closed the RAPI connection")
        return data

    def close(self) -> None:
        self.sock.close()


class SerialTransport:
    def __init__(self, path: str) -> None:
        import serial

        self.port = serial.Serial(path, 115200, timeout=0)

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def read(self, timeout: float) -> bytes:
        self.port.timeout = max(timeout, 0.001)
        return bytes(self.port.read(max(1, self.port.in_waiting)))

    def close(self) -> None:
        self.port.close()


@dataclass
class Frame:
    raw: bytes
    tokens: list[str]


def check_reply_frame(raw: bytes) -> list[str]:
    """Checks a frame as the firmware does: upper-case ^CC XOR checksum; returns the tokens."""
    body, sep, digits = raw.rpartition(b"^")
    assert sep, f"frame without checksum: {raw!r}"
    assert len(digits) == 2, f"checksum not two hex digits: {raw!r}"
    assert digits == digits.upper(), f"lower-case checksum (the firmware rejects it): {raw!r}"
    assert int(digits, 16) == rapi.xor_checksum(body), f"bad checksum in {raw!r}"
    return body.decode().split()


@dataclass
class RapiClient:
    transport: Transport
    asyncs: list[Frame] = field(default_factory=list)
    _reader: rapi.FrameReader = field(default_factory=rapi.FrameReader)
    _pending: list[bytes] = field(default_factory=list)

    def _next_frame(self, deadline: float) -> bytes | None:
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pending.extend(self._reader.feed(self.transport.read(min(left, 0.2))))
        return self._pending.pop(0)

    def send(self, frame: bytes, timeout: float = 2.0) -> list[str]:
        """One command, one reply (async frames on the way are kept in ``asyncs``)."""
        self.transport.write(frame)
        deadline = time.monotonic() + timeout
        while True:
            raw = self._next_frame(deadline)
            if raw is None:
                raise AssertionError(f"no reply to {frame!r} within {timeout} s")
            tokens = check_reply_frame(raw)
            if tokens[0].startswith("$A"):
                self.asyncs.append(Frame(raw, tokens))
                continue
            assert tokens[0] in ("$OK", "$NK"), f"reply to {frame!r} is neither $OK nor $NK: {raw!r}"
            return tokens

    def cmd(self, code: str, *args: str, timeout: float = 2.0) -> list[str]:
        return self.send(rapi.command(code, *args), timeout)

    def wait_async(self, code: str, predicate: Callable[[list[str]], bool], timeout: float = 3.0) -> Frame:
        """Polls (with a deadline) for an async frame ``$<code>`` whose tokens satisfy predicate."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for frame in self.asyncs[seen:]:
                if frame.tokens[0] == f"${code}" and predicate(frame.tokens):
                    self.asyncs.remove(frame)
                    return frame
            seen = len(self.asyncs)
            raw = self._next_frame(deadline)
            if raw is None:
                got = [f.raw for f in self.asyncs]
                raise AssertionError(f"no matching ${code} within {timeout} s; async frames seen: {got!r}")
            tokens = check_reply_frame(raw)
            assert tokens[0].startswith("$A"), f"unsolicited non-async frame {raw!r}"
            self.asyncs.append(Frame(raw, tokens))

    def close(self) -> None:
        self.transport.close()


class Connector:
    """Opens RAPI clients over TCP or a serial device; closes them all at teardown."""

    def __init__(self) -> None:
        self.clients: list[RapiClient] = []

    def tcp(self, port: int) -> RapiClient:
        client = RapiClient(SocketTransport(port))
        self.clients.append(client)
        return client

    def serial(self, path: str) -> RapiClient:
        client = RapiClient(SerialTransport(path))
        self.clients.append(client)
        return client


@pytest.fixture
def connect() -> Iterator[Connector]:
    connector = Connector()
    try:
        yield connector
    finally:
        for client in connector.clients:
            client.close()
