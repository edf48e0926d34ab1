"""RAPI client over the PTY (firmware.md §6.1).

Frames out: `$XX args^CC\\r`, CC = upper-case XOR checksum, no sequence ids. One command
outstanding, 500 ms reply timeout. Async events (`$A…`, `$ST`, `$WF`) may arrive at any time
and go to `on_event`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

REPLY_TIMEOUT = 0.5
MAX_FRAME = 256


def checksum(body: str) -> str:
    value = 0
    for byte in body.encode("ascii", "replace"):
        value ^= byte
    return f"{value:02X}"


def encode(command: str) -> bytes:
    return f"{command}^{checksum(command)}\r".encode("ascii", "replace")


@dataclass(frozen=True)
class Reply:
    ok: bool  # `$OK`
    tokens: list[str]  # tokens after `$OK`/`$NK`
    valid: bool = True  # False: bad checksum or neither $OK nor $NK


def parse_frame(frame: str) -> list[str] | None:
    """Split a frame starting at `$`; None when a checksum is present and wrong (lower-case is wrong)."""
    body = frame
    if "^" in frame:
        body, _, given = frame.rpartition("^")
        if given != checksum(body):
            return None
    return body.split()


def is_async(tokens: list[str]) -> bool:
    return bool(tokens) and (tokens[0].startswith("$A") or tokens[0] in ("$ST", "$WF"))


EventHandler = Callable[[list[str]], None]


class RapiClient:
    """Owns the serial port. `open()` returns an error string instead of raising."""

    def __init__(self, path: str, on_event: EventHandler) -> None:
        self.path = path
        self.on_event = on_event
        self.comm_sent = 0
        self.comm_success = 0
        self.is_open = False
        self._serial: object | None = None
        self._fd = -1
        self._buf = bytearray()
        self._pending: asyncio.Future[Reply] | None = None
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> str | None:
        """Open the PTY once (the real firmware never reopens it, §5.4)."""
        import serial  # lazy: keeps start-up fast

        try:
            port = serial.Serial(self.path, 115200, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            return str(exc)
        self._serial = port
        self._fd = port.fileno()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self.is_open = True
        return None

    def close(self) -> None:
        if self._loop is not None and self._fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()  # type: ignore[attr-defined]
        self._fd = -1
        self.is_open = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            print(f"RAPI port read failed: {exc}", file=sys.stderr, flush=True)
        if not data:  # the other side (socat) went away: the real firmware never reconnects
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            return
        self._buf.extend(data)
        while True:
            end = self._buf.find(b"\r")
            if end < 0:
                if len(self._buf) > MAX_FRAME:
                    del self._buf[:]
                return
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            start = raw.find(b"$")
            if start >= 0:  # bytes before `$` are ignored
                self._on_frame(raw[start:].decode("ascii", "replace").strip())

    def _on_frame(self, frame: str) -> None:
        tokens = parse_frame(frame)
        if tokens is not None and is_async(tokens):
            try:
                self.on_event(tokens)
            except Exception as exc:  # an event handler bug must not kill the reader
                print(f"RAPI event handler failed: {exc!r}", file=sys.stderr, flush=True)
            return
        pending = self._pending
        if pending is None or pending.done():
            return
        if tokens is None or not tokens or tokens[0] not in ("$OK", "$NK"):
            pending.set_result(Reply(ok=False, tokens=[], valid=False))
        else:
            pending.set_result(Reply(ok=tokens[0] == "$OK", tokens=tokens[1:]))

    async def command(self, command: str) -> Reply | None:
        """Send one command and wait for its reply; None on timeout or a closed port."""
        if not self.is_open or self._loop is None:
            return None
        async with self._lock:
            self._pending = self._loop.create_future()
            try:
                os.write(self._fd, encode(command))
            except OSError:
                self._pending = None
                return None
            self.comm_sent += 1
            try:
                reply = await asyncio.wait_for(self._pending, REPLY_TIMEOUT)
            except TimeoutError:
                return None
            finally:
                self._pending = None
            if reply.valid:
                self.comm_success += 1
            return reply
