"""The firmware's side of the RAPI link benchmark: one command at a time, each round trip timed.

Runs as its own process (``python bench/link_client.py pty:/path/rapi.pty``), as the firmware
does: the python bridge lives in the harness process, and a client sharing that process (and
its GIL) would make the bridge look slower or faster than it is for a real firmware. Prints
one JSON object on stdout.

Checksums come from ``harness.trace`` (the harness's reading of evse.md §1), not from the
emulator, so a bug in the emulator's framing cannot hide behind the same bug in the checker.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from harness.trace import checksum_ok as trace_checksum_ok
from harness.trace import xor_checksum

MAX_FRAME = 256  # a RAPI frame is far shorter; longer is garbage, not a frame
KEEP_BAD = 5  # bad replies kept verbatim in the result


def frame(body: str) -> bytes:
    """``$GS`` -> ``b"$GS^30\\r"``: the checksum covers ``$`` up to ``^``, upper-case hex."""
    if not body.startswith("$"):
        raise ValueError(f"a RAPI command starts with '$': {body!r}")
    data = body.encode("ascii")
    return data + b"^%02X\r" % xor_checksum(data)


def checksum_ok(text: str) -> bool:
    """A frame (without ``\\r``) ending in ``^CC``, two upper-case hex digits that match.

    Upper case only: the firmware rejects lower-case hex (firmware.md §6.1)."""
    return "^" in text and trace_checksum_ok(text.encode("latin-1", "replace"), upper_only=True)


def is_reply(text: str) -> bool:
    """``$OK``/``$NK`` answer a command; everything else (``$AT``, ``$AB``) is unsolicited."""
    return text[:3] in ("$OK", "$NK") and (len(text) == 3 or text[3] in " ^")


def reply_ok(text: str) -> bool:
    """What a successful read command gets back: ``$OK …`` with a valid checksum."""
    return text.startswith(("$OK ", "$OK^")) and checksum_ok(text)


class FrameSplitter:
    """Bytes in, frames (``$…`` without ``\\r``) out; noise before ``$`` is dropped."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> Iterator[str]:
        self._buf += data
        while True:
            start = self._buf.find(b"$")
            if start < 0:
                self._buf = b""
                return
            end = self._buf.find(b"\r", start)
            if end < 0:
                self._buf = self._buf[start:][-MAX_FRAME:]
                return
            chunk, self._buf = self._buf[start:end], self._buf[end + 1 :]
            yield chunk[chunk.rfind(b"$") :].decode("ascii", "replace")


@dataclass
class ClientResult:
    """What one run saw: round-trip times (ns) of the measured commands and their replies."""

    target: str
    request: str
    warmup: int
    samples_ns: list[int] = field(default_factory=list)
    ok: int = 0  # measured replies that were `$OK …` with a valid checksum
    bad: list[str] = field(default_factory=list)  # the first few other replies, verbatim
    bad_count: int = 0
    unsolicited: int = 0  # `$AT`/`$AB` frames seen between replies (not timed apart)
    example: str | None = None  # the first measured reply
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def round_trips(
    fd: int,
    request: bytes,
    *,
    reps: int,
    warmup: int,
    timeout: float,
    target: str = "",
    clock: Callable[[], int] = time.perf_counter_ns,
) -> ClientResult:
    """Send ``request``, read until its reply, ``warmup + reps`` times; time the last ``reps``.

    A round trip is from just before the write to the read that completes the reply frame.
    Unsolicited frames arriving meanwhile are counted and skipped; a reply missing for
    ``timeout`` seconds ends the run with ``error`` set (what was measured is kept)."""
    result = ClientResult(target=target, request=request.decode("ascii").rstrip("\r"), warmup=warmup)
    splitter = FrameSplitter()
    for i in range(warmup + reps):
        t0 = clock()
        try:
            reply = _one(fd, request, splitter, result, timeout)
        except (OSError, TimeoutError) as exc:
            result.error = f"round trip {i + 1} of {warmup + reps}: {type(exc).__name__}: {exc}"
            return result
        elapsed = clock() - t0
        if i < warmup:
            continue
        result.samples_ns.append(elapsed)
        if result.example is None:
            result.example = reply
        if reply_ok(reply):
            result.ok += 1
        else:
            result.bad_count += 1
            if len(result.bad) < KEEP_BAD:
                result.bad.append(reply)
    return result


def _one(fd: int, request: bytes, splitter: FrameSplitter, result: ClientResult, timeout: float) -> str:
    sent = 0
    while sent < len(request):
        sent += os.write(fd, request[sent:])
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no reply to {request!r} within {timeout:g}s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        data = os.read(fd, 4096)
        if not data:
            raise OSError("the link closed")
        for text in splitter.feed(data):
            if is_reply(text):
                return text  # one command outstanding: the first reply is its reply
            result.unsolicited += 1


@contextmanager
def open_target(target: str, timeout: float) -> Iterator[int]:
    """``tcp:HOST:PORT`` (a socket, Nagle off as the bridges do) or ``pty:PATH`` (the slave
    opened read-write, no controlling tty, raw: as the firmware opens its serial port)."""
    kind, _, rest = target.partition(":")
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(True)
            yield sock.fileno()
        finally:
            sock.close()
    elif kind == "pty":
        fd = os.open(rest, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            tty.setraw(fd)
            yield fd
        finally:
            os.close(fd)
    else:
        raise ValueError(f"target must be tcp:HOST:PORT or pty:PATH, not {target!r}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time RAPI round trips over TCP or a PTY; print JSON.")
    p.add_argument("target", help="tcp:HOST:PORT or pty:PATH")
    p.add_argument("--command", default="$GS", help="the command without checksum (default $GS)")
    p.add_argument("--reps", type=int, default=500)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for one reply")
    args = p.parse_args(argv)
    request = frame(args.command)
    try:
        with open_target(args.target, args.timeout) as fd:
            result = round_trips(
                fd, request, reps=args.reps, warmup=args.warmup, timeout=args.timeout, target=args.target
            )
    except (OSError, ValueError) as exc:
        result = ClientResult(target=args.target, request=request.decode().rstrip("\r"), warmup=args.warmup)
        result.error = f"open {args.target}: {type(exc).__name__}: {exc}"
    print(json.dumps(result.to_json()))
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
