"""Both serial bridges against a real TCP peer: bytes flow both ways, restarts keep a link."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.bridge import SocatBridge
from harness.fault_bridge import FaultBridge
from tests.harness.support import poll


class EchoServer:
    """Accepts clients one after another and answers each `$X\\r` with `$OK X\\r`."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.clients = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.clients += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while data := conn.recv(1024):
                buf += data
                while b"\r" in buf:
                    frame, buf = buf.split(b"\r", 1)
                    conn.sendall(b"$OK " + frame[1:] + b"\r")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[EchoServer]:
    s = EchoServer()
    yield s
    s.close()


def _roundtrip(link: Path, request: bytes) -> bytes:
    """Open the PTY like the firmware does, send one frame, read the reply, close."""
    fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, request)
        reply = b""

        def got() -> bool:
            nonlocal reply
            reply += os.read(fd, 256)
            return reply.endswith(b"\r")

        import select

        def readable_and_complete() -> bool:
            r, _, _ = select.select([fd], [], [], 0.2)
            return bool(r) and got()

        poll(readable_and_complete, f"reply to {request!r}", timeout=10)
        return reply
    finally:
        os.close(fd)


def _make(kind: str, tmp_path: Path, port: int) -> SocatBridge | FaultBridge:
    common = {
        "instance": "t",
        "link": tmp_path / "rapi.pty",
        "rapi_host": "127.0.0.1",
        "rapi_port": port,
        "log_path": tmp_path / "bridge.log",
    }
    return SocatBridge(**common) if kind == "socat" else FaultBridge(**common)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["socat", "python"])
def test_bytes_flow_and_a_second_firmware_run_gets_a_working_link(
    kind: str, tmp_path: Path, server: EchoServer
) -> None:
    bridge = _make(kind, tmp_path, server.port)
    bridge.start()
    try:
        assert bridge.link.is_symlink()
        assert _roundtrip(bridge.link, b"$GV\r") == b"$OK GV\r"
        # The "firmware" closed the PTY. socat exits on that (upstream W8); recycle() must
        # give the next run a working link, as Pair.restart_firmware relies on.
        bridge.recycle()
        assert _roundtrip(bridge.link, b"$GS\r") == b"$OK GS\r"
        assert bridge.alive() is None
    finally:
        bridge.stop()
    assert not bridge.link.is_symlink()
    assert bridge.alive() is not None


def test_socat_is_restarted_when_it_exits_unexpectedly(tmp_path: Path, server: EchoServer) -> None:
    bridge = SocatBridge(
        instance="t", link=tmp_path / "rapi.pty", rapi_host="127.0.0.1", rapi_port=server.port,
        log_path=tmp_path / "bridge.log",
    )  # fmt: skip
    bridge.start()
    try:
        first = bridge.pid()
        assert first is not None
        os.kill(first, 9)
        poll(lambda: bridge.pid() not in (None, first) and bridge.link.is_symlink(), "socat restarted")
        assert bridge.restarts == 1
        assert _roundtrip(bridge.link, b"$GV\r") == b"$OK GV\r"
        assert "restarting" in (tmp_path / "bridge.log").read_text()
    finally:
        bridge.stop()
