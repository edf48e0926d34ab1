"""RAPI framing as a real OpenEVSE controller speaks it (evse.md §1, firmware.md §6.1).

A command is ``$XX[ args][ :ss]`` followed by ``^CC`` (XOR checksum), ``*CC`` (additive
checksum, legacy) or nothing, then ``\\r``. Replies and async frames always carry an
upper-case XOR checksum, because the WiFi firmware rejects lower-case hex (firmware.md §6.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

ChecksumKind = Literal["xor", "add", "none"]

# A frame longer than this is garbage (the controller's own buffer is 32 bytes); drop it.
MAX_FRAME = 128
_HEX = "0123456789abcdefABCDEF"


def xor_checksum(data: bytes) -> int:
    """XOR of every byte (the ``^`` checksum)."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def additive_checksum(data: bytes) -> int:
    """8-bit sum of every byte (the legacy ``*`` checksum)."""
    return sum(data) & 0xFF


@dataclass(frozen=True)
class Command:
    """One parsed command frame."""

    raw: str  # the frame as received, without the trailing \r
    code: str  # two-letter command, e.g. "GV"; "" when the frame is unparseable
    args: list[str] = field(default_factory=list)
    seq_id: int | None = None  # the optional ``:ss`` sequence id, echoed in the reply
    checksum_kind: ChecksumKind = "none"
    checksum_ok: bool = True

    @property
    def valid(self) -> bool:
        return self.checksum_ok and len(self.code) == 2


def parse_command(raw: bytes) -> Command:
    """Parse one frame (from ``$`` up to, not including, ``\\r``); never raises."""
    text = raw.decode("ascii", errors="replace")
    body = raw
    kind: ChecksumKind = "none"
    ok = True
    marker = max(raw.rfind(b"^"), raw.rfind(b"*"))
    if marker >= 0:
        kind = "xor" if raw[marker : marker + 1] == b"^" else "add"
        body = raw[:marker]
        digits = raw[marker + 1 :].decode("ascii", errors="replace")
        if len(digits) != 2 or any(c not in _HEX for c in digits):
            ok = False
        else:
            expected = xor_checksum(body) if kind == "xor" else additive_checksum(body)
            ok = int(digits, 16) == expected
    tokens = body.decode("ascii", errors="replace").split()
    if not tokens or not tokens[0].startswith("$") or len(tokens[0]) != 3:
        return Command(raw=text, code="", checksum_kind=kind, checksum_ok=ok)
    seq_id: int | None = None
    if len(tokens) > 1 and tokens[-1].startswith(":"):
        try:
            seq_id = int(tokens[-1][1:], 16)
        except ValueError:
            seq_id = None
        if seq_id is None or not 0 <= seq_id <= 0xFF:
            return Command(raw=text, code="", checksum_kind=kind, checksum_ok=ok)
        tokens = tokens[:-1]
    return Command(
        raw=text,
        code=tokens[0][1:],
        args=tokens[1:],
        seq_id=seq_id,
        checksum_kind=kind,
        checksum_ok=ok,
    )


def frame(body: str) -> bytes:
    """``body`` (starting with ``$``) + ``^CC`` upper-case XOR checksum + ``\\r``."""
    data = body.encode("ascii")
    return data + b"^%02X\r" % xor_checksum(data)


def reply(ok: bool, values: list[str] | None = None, seq_id: int | None = None) -> bytes:
    """``$OK``/``$NK`` with values and the echoed sequence id."""
    parts = ["$OK" if ok else "$NK", *(values or [])]
    if seq_id is not None:
        parts.append(f":{seq_id:02X}")
    return frame(" ".join(parts))


def command(code: str, *args: str, checksum: ChecksumKind = "xor", seq_id: int | None = None) -> bytes:
    """Build a command frame the way a client would (used by tests and the measuring script)."""
    parts = [f"${code}", *args]
    if seq_id is not None:
        parts.append(f":{seq_id:02X}")
    data = " ".join(parts).encode("ascii")
    if checksum == "xor":
        return data + b"^%02X\r" % xor_checksum(data)
    if checksum == "add":
        return data + b"*%02X\r" % additive_checksum(data)
    return data + b"\r"


class FrameReader:
    """Split a byte stream into frames: bytes before ``$`` are ignored, ``\\r`` ends a frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        while True:
            start = self._buf.find(b"$")
            if start < 0:
                self._buf.clear()
                return
            del self._buf[:start]
            end = self._buf.find(b"\r")
            if end < 0:
                if len(self._buf) > MAX_FRAME:
                    self._buf.clear()
                return
            chunk = bytes(self._buf[:end]).rstrip(b"\n")
            del self._buf[: end + 1]
            # A "$" inside a frame starts a new frame: the earlier bytes were noise.
            chunk = chunk[chunk.rfind(b"$") :]
            if len(chunk) <= MAX_FRAME:
                yield chunk
