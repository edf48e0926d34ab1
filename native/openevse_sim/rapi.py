"""RAPI client over the PTY (firmware.md §6.1).

Frames out: `$XX args^CC\\r`, CC = upper-case XOR checksum, no sequence ids. One command
outstanding, 500 ms reply timeout. Async events (`$A…`, `$ST`, `$WF`) may arrive at any time
and go to `on_event`.

Reading follows OpenEVSE_Lib `RapiSender` (the library firmware.md §6.1 cites), because
`rapi_connected` and `comm_success` (§7.1) are its counters:

- bytes that arrive start a 20 ms read window (`RAPI_READ_TIMEOUT_MS`); bytes before `$` are
  skipped; the window ends with the first complete `$…\\r` frame;
- a window that ends without a complete frame (line noise, a torn frame) clears
  `connected` and completes the command awaiting a reply as a timeout at once;
- every `$OK` frame counts a success and sets `connected`, also a late one that arrives
  after its command timed out (the library cannot tell); `$NK` is not a success;
- a silent link (no bytes at all) leaves `connected` as it was: commands just time out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import sys
from collections.abc import Callable
from dataclasses import dataclass

REPLY_TIMEOUT = 0.5
READ_WINDOW = 0.02  # RAPI_READ_TIMEOUT_MS
MAX_FRAME = 99  # RAPI_BUFLEN - 1: a longer frame is a buffer overflow, the command fails


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
        self.connected = False  # `rapi_connected` (§7.1): see the module doc
        self.is_open = False
        self._serial: object | None = None
        self._fd = -1
        self._buf = bytearray()
        self._pending: asyncio.Future[Reply] | None = None
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._window: asyncio.TimerHandle | None = None  # the 20 ms read window's timer
        self._window_open = False
        self._windows_closed = 0  # windows ended by a complete frame

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
        self._close_window()
        if self._loop is not None and self._fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()  # type: ignore[attr-defined]
        self._fd = -1
        self.is_open = False

    def _read(self) -> bool:
        """Move what the port holds into the buffer; False once the other side is gone."""
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return True
        except OSError as exc:
            data = b""
            print(f"RAPI port read failed: {exc}", file=sys.stderr, flush=True)
        if not data:  # the other side (socat) went away: the real firmware never reconnects
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            return False
        self._buf.extend(data)
        return True

    def _on_readable(self) -> None:
        if self._read():
            self._scan()

    def _scan(self) -> None:
        """Cut complete frames out of the buffer; keep a read window open over the rest."""
        while self._buf:
            start = self._buf.find(b"$")
            if start < 0:  # no frame start: the library reads these bytes and skips them
                del self._buf[:]
                self._open_window()
                return
            del self._buf[:start]
            end = self._buf.find(b"\r")
            if end < 0:
                if len(self._buf) >= MAX_FRAME:
                    del self._buf[:]
                    self._close_window()
                    self._fail_pending(Reply(ok=False, tokens=[], valid=False))
                else:
                    self._open_window()
                return
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._close_window()
            self._on_frame(raw.decode("ascii", "replace").strip())

    def _open_window(self) -> None:
        if not self._window_open and self._loop is not None:
            self._window_open = True
            self._window = self._loop.call_later(READ_WINDOW, self._window_ended)

    def _close_window(self) -> None:
        if self._window_open:
            self._window_open = False
            self._windows_closed += 1
        if self._window is not None:
            self._window.cancel()
            self._window = None

    def _window_ended(self) -> None:
        self._window = None
        closed = self._windows_closed
        # Bytes that complete the frame may already wait in the port, unread only because
        # this process was slow: read them before calling the frame torn. (Only when the
        # port is readable: with pyserial's VMIN=0 an empty read returns b"", not EAGAIN.)
        if self._fd >= 0 and select.select([self._fd], [], [], 0)[0] and self._read():
            self._scan()
        if self._windows_closed != closed:
            return  # a frame completed inside the window
        self._window_open = False
        del self._buf[:]
        if self.connected:
            print("DBUG: RAPI bytes without a complete frame within 20 ms: link not connected", flush=True)
        self.connected = False
        self._fail_pending(None)

    def _fail_pending(self, reply: Reply | None) -> None:
        pending = self._pending
        if pending is not None and not pending.done():
            if reply is None:
                pending.set_exception(TimeoutError())
            else:
                pending.set_result(reply)

    def _on_frame(self, frame: str) -> None:
        tokens = parse_frame(frame)
        if tokens is not None and is_async(tokens):
            try:
                self.on_event(tokens)
            except Exception as exc:  # an event handler bug must not kill the reader
                print(f"RAPI event handler failed: {exc!r}", file=sys.stderr, flush=True)
            return
        if tokens and tokens[0] == "$OK":
            self.comm_success += 1
            self.connected = True
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
            return reply
