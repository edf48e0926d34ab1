"""The RAPI trace of a pair: one JSON line per frame that crossed the serial link.

``<instance dir>/rapi-trace.jsonl``, written by the harness for every pair:

- python bridge (``harness.fault_bridge.FaultBridge``): the bridge records each frame as it
  delivers it, so the trace is what the firmware (or the EVSE) actually got, after faults;
  frames a fault swallowed or altered carry a ``fault`` field.
- socat bridge: socat runs with ``-x`` (hex dump of every transfer, direction-tagged and
  timestamped, into ``bridge.log``); ``SocatDumpTracer`` follows that log and writes the same
  JSON lines. This works with any emulator (ours, upstream's, Docker), because it sits on
  the link itself.

Fields of a frame line (docs/faults.md):

``t``            ``time.monotonic()`` seconds when the frame was delivered (socat: its dump
                 timestamp, a wall-clock time converted to this process's monotonic clock)
``dir``          ``"fw->evse"`` or ``"evse->fw"``
``raw``          the frame, ``$`` to before ``\\r`` (bytes decoded as latin-1)
``command``      the two letters after ``$`` (``GS``, ``OK``, ``AT``, …)
``checksum_ok``  evse.md §1 / firmware.md §6.1: XOR ``^CC`` or additive ``*CC`` matches; no
                 checksum is fine; towards the firmware the hex must be upper case
``reply_to``     on an ``$OK``/``$NK`` towards the firmware: the command it answers
``cmd_t``        with ``reply_to``: when that command crossed the link
``fault``        python bridge only: ``dropped``, ``corrupted``, ``delayed``, ``stalled``,
                 ``disconnected`` (not delivered: the TCP side was down), ``injected`` (put
                 on the wire by the test, ``FaultBridge.inject``: noise has ``command`` "")

Link events (python bridge): ``{"t": …, "event": "tcp-connected"|"tcp-closed", "why": …}``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FW_TO_EVSE = "fw->evse"
EVSE_TO_FW = "evse->fw"
DIRECTIONS = (FW_TO_EVSE, EVSE_TO_FW)
_EMULATOR_DIRS = {"rx": FW_TO_EVSE, "tx": EVSE_TO_FW}  # emulator --trace (emulator/README.md)
_HEX = "0123456789ABCDEFabcdef"
SWALLOWED = frozenset({"dropped", "stalled", "disconnected"})  # faults that lose the frame

TraceEntry = dict[str, Any]


# ---- frames ------------------------------------------------------------------------------


def frame_command(raw: bytes) -> str:
    """The two letters after ``$`` (evse.md §1), or ``""`` when there is no ``$``."""
    start = raw.find(b"$")
    if start < 0:
        return ""
    return raw[start + 1 : start + 3].decode("latin-1")


def xor_checksum(body: bytes) -> int:
    value = 0
    for byte in body:
        value ^= byte
    return value


def checksum_ok(raw: bytes, *, upper_only: bool = False) -> bool:
    """Does the frame's checksum match (evse.md §1)? ``^CC`` = XOR of ``$`` up to ``^``,
    ``*CC`` = 8-bit sum (legacy); none is valid. ``upper_only``: lower-case hex is bad, as the
    firmware reads replies (firmware.md §6.1)."""
    frame = raw.rstrip(b"\r")
    start = frame.find(b"$")
    if start >= 0:
        frame = frame[start:]
    for marker, compute in ((b"^", xor_checksum), (b"*", lambda body: sum(body) & 0xFF)):
        cut = frame.rfind(marker)
        if cut < 0:
            continue
        given = frame[cut + 1 :].decode("latin-1")
        if len(given) != 2 or any(c not in _HEX for c in given):
            return False
        if upper_only and given != given.upper():
            return False
        return int(given, 16) == compute(frame[:cut])
    return True


def corrupt_checksum(raw: bytes) -> bytes:
    """The same frame with a wrong (but well-formed, upper-case) ``^CC``: flips the low bit
    of the right value; a frame without a checksum gets a wrong one appended."""
    end = b"\r" if raw.endswith(b"\r") else b""
    frame = raw[: len(raw) - len(end)]
    start = max(frame.find(b"$"), 0)
    cut = frame.rfind(b"^")
    body = frame[:cut] if cut > start else frame
    wrong = xor_checksum(body[start:]) ^ 0x01
    return body + f"^{wrong:02X}".encode() + end


class FrameSplitter:
    """Bytes in, complete ``\\r``-terminated frames out; a runaway line is cut at ``limit``."""

    def __init__(self, limit: int = 1024) -> None:
        self._buf = b""
        self.limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data
        out: list[bytes] = []
        while (cut := buf.find(b"\r")) >= 0:
            out.append(buf[: cut + 1])
            buf = buf[cut + 1 :]
        if len(buf) > self.limit:
            out.append(buf)
            buf = b""
        self._buf = buf
        return out

    def pending(self) -> bytes:
        return self._buf

    def clear(self) -> None:
        self._buf = b""


# ---- writing -----------------------------------------------------------------------------


class ReplyMatcher:
    """Pairs each ``$OK``/``$NK`` with the oldest command the EVSE has not answered yet.

    The controller answers every command once, in order (evse.md §1), so this is exact even
    when the firmware gave up on a late reply and sent its next command (firmware.md §6.1)."""

    def __init__(self, depth: int = 32) -> None:
        self._queue: collections.deque[tuple[str, float]] = collections.deque(maxlen=depth)

    def command(self, command: str, t: float) -> None:
        if command and command not in ("OK", "NK"):
            self._queue.append((command, t))

    def reply(self, command: str) -> dict[str, Any]:
        """``{"reply_to", "cmd_t"}`` for a reply frame with a command to answer, else ``{}``."""
        if command not in ("OK", "NK") or not self._queue:
            return {}
        code, t = self._queue.popleft()
        return {"reply_to": code, "cmd_t": round(t, 6)}

    def clear(self) -> None:
        self._queue.clear()


class TraceWriter:
    """Thread-safe JSON-lines writer; pairs each ``$OK``/``$NK`` with the command before it."""

    def __init__(self, path: Path | None, *, match: bool = True) -> None:
        self.path = path
        self.match = match
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._outstanding = ReplyMatcher()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8", buffering=1)

    def frame(
        self,
        direction: str,
        raw: bytes,
        *,
        t: float | None = None,
        fault: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> TraceEntry:
        """Record one frame and return the entry written."""
        now = time.monotonic() if t is None else t
        command = frame_command(raw)
        entry: TraceEntry = {
            "t": round(now, 6),
            "dir": direction,
            "raw": raw.rstrip(b"\r").decode("latin-1"),
            "command": command,
            "checksum_ok": checksum_ok(raw, upper_only=direction == EVSE_TO_FW),
        }
        with self._lock:
            extra = extra or {}
            if self.match and "reply_to" not in extra:
                self._match(entry, direction, command, now, fault)
            if fault is not None:
                entry["fault"] = fault
            entry.update(extra)
            self._write(entry)
        return entry

    def _match(self, entry: TraceEntry, direction: str, command: str, now: float, fault: str | None) -> None:
        if direction == FW_TO_EVSE and fault not in SWALLOWED:
            self._outstanding.command(command, now)
        elif direction == EVSE_TO_FW:
            entry.update(self._outstanding.reply(command))

    def event(self, event: str, **extra: Any) -> None:
        entry: TraceEntry = {"t": round(time.monotonic(), 6), "event": event, **extra}
        with self._lock:
            if event == "tcp-closed":
                self._outstanding.clear()
            self._write(entry)

    def _write(self, entry: TraceEntry) -> None:
        if self._file is not None:
            self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# ---- reading -----------------------------------------------------------------------------


def normalize(entry: TraceEntry) -> TraceEntry:
    """Accept the emulator's own ``--trace`` lines too (``dir`` rx/tx → ours)."""
    direction = entry.get("dir")
    if isinstance(direction, str) and direction in _EMULATOR_DIRS:
        entry = {**entry, "dir": _EMULATOR_DIRS[direction]}
    return entry


def read_trace(path: Path) -> list[TraceEntry]:
    """Every entry of a trace file (a torn last line is skipped); ``[]`` if it is absent."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    entries: list[TraceEntry] = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict):
                entries.append(normalize(data))
    return entries


def frames(
    entries: Iterable[TraceEntry],
    *,
    direction: str | None = None,
    command: str | None = None,
    since: float | None = None,
    delivered: bool | None = None,
) -> list[TraceEntry]:
    """Frame entries filtered; ``delivered=True`` leaves out those a fault swallowed."""
    out = []
    for e in entries:
        if "dir" not in e:
            continue
        if direction is not None and e["dir"] != direction:
            continue
        if command is not None and e.get("command") != command:
            continue
        if since is not None and e["t"] < since:
            continue
        if delivered is not None and (e.get("fault") in SWALLOWED) == delivered:
            continue
        out.append(e)
    return out


def reply_gaps(entries: Iterable[TraceEntry], *, since: float | None = None) -> list[tuple[str, float]]:
    """(command, seconds from the command crossing the link to its reply reaching the
    firmware) for every delivered reply: the reply delay as measured on the wire."""
    return [
        (str(e["reply_to"]), float(e["t"]) - float(e["cmd_t"]))
        for e in frames(entries, direction=EVSE_TO_FW, since=since, delivered=True)
        if "reply_to" in e and "cmd_t" in e
    ]


def format_entry(e: TraceEntry) -> str:
    if "dir" not in e:
        rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "event"))
        return f"{e.get('t', 0):.3f} -- {e.get('event')} {rest}".rstrip()
    flags = []
    if not e.get("checksum_ok", True):
        flags.append("BAD-CHECKSUM")
    if e.get("fault"):
        flags.append(f"fault={e['fault']}")
    if "reply_to" in e:
        flags.append(f"reply_to={e['reply_to']} +{(e['t'] - e['cmd_t']) * 1000:.0f}ms")
    raw = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(e["raw"]))
    return f"{e['t']:.3f} {e['dir']:8} {raw}  {' '.join(flags)}".rstrip()


def tail_text(path: Path, lines: int = 60) -> str:
    """The last ``lines`` entries, one readable line each (for failure reports)."""
    entries = read_trace(path)
    if not entries:
        return f"(no RAPI trace entries in {path})"
    return "\n".join(format_entry(e) for e in entries[-lines:])


# ---- socat -x dumps ----------------------------------------------------------------------

# socat 1.7.4 `-x`: "> 2026/11/22 04:16:39.000449599  length=7 from=0 to=6" then " 24 47 …".
# ">" = left (our PTY, the firmware) to right (TCP, the emulator). 1.7.4 prints the
# microseconds zero-padded to 9 digits (measured: 39.449599 s printed as 39.000449599).
_DUMP_HEADER = re.compile(
    r"^([<>]) (\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)\s+length=(\d+) from=\d+ to=\d+\s*$"
)


@dataclass
class DumpChunk:
    direction: str
    wall: float  # seconds since the epoch
    data: bytes


class SocatDumpParser:
    """Incremental parser of socat ``-x`` output mixed with its ``-d -d`` log lines."""

    def __init__(self, micro_in_nine: bool = True) -> None:
        self.micro_in_nine = micro_in_nine
        self._partial = ""
        self._want: tuple[str, float, int] | None = None
        self._got = bytearray()

    def feed(self, text: str) -> list[DumpChunk]:
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()
        out: list[DumpChunk] = []
        for line in lines:
            chunk = self._line(line)
            if chunk is not None:
                out.append(chunk)
        return out

    def _line(self, line: str) -> DumpChunk | None:
        if self._want is not None and line.startswith(" "):
            with contextlib.suppress(ValueError):
                self._got.extend(bytes.fromhex(line))
            want_dir, wall, want_len = self._want
            if len(self._got) >= want_len:
                data = bytes(self._got[:want_len])
                self._want, self._got = None, bytearray()
                return DumpChunk(want_dir, wall, data)
            return None
        m = _DUMP_HEADER.match(line)
        if m is None:
            return None
        arrow, year, month, day, hour, minute, sec, frac, length = m.groups()
        fields = (int(year), int(month), int(day), int(hour), int(minute), int(sec), 0, 0, -1)
        tm = time.struct_time(fields)
        nine = self.micro_in_nine and len(frac) == 9
        fraction = int(frac) / 1e6 if nine else float("0." + frac)
        direction = FW_TO_EVSE if arrow == ">" else EVSE_TO_FW
        self._want, self._got = (direction, time.mktime(tm) + fraction, int(length)), bytearray()
        return None


class SocatDumpTracer:
    """Follows socat's log (``-x`` dumps) and writes ``rapi-trace.jsonl``; a daemon thread."""

    def __init__(self, log_path: Path, trace_path: Path, *, micro_in_nine: bool = True, period: float = 0.05):
        self.log_path = log_path
        self.writer = TraceWriter(trace_path)
        self.parser = SocatDumpParser(micro_in_nine)
        self.period = period
        self._split = {FW_TO_EVSE: FrameSplitter(), EVSE_TO_FW: FrameSplitter()}
        self._offset = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SocatDumpTracer:
        with contextlib.suppress(OSError):
            self._offset = self.log_path.stat().st_size  # only what this run dumps
        self._thread = threading.Thread(target=self._run, name="socat-trace", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.poll()
        self.poll()

    def poll(self) -> int:
        """Convert whatever socat dumped since the last call; returns frames written."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return 0
        self._offset += len(data)
        offset = time.monotonic() - time.time()
        n = 0
        for chunk in self.parser.feed(data.decode("latin-1")):
            for frame in self._split[chunk.direction].feed(chunk.data):
                self.writer.frame(chunk.direction, frame, t=chunk.wall + offset)
                n += 1
        return n

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self.writer.close()


def socat_micro_in_nine(version_text: str) -> bool:
    """socat 1.7.x prints microseconds in a 9-digit field (measured on 1.7.4.4)."""
    m = re.search(r"socat version (\d+)\.(\d+)", version_text)
    return m is None or (int(m.group(1)), int(m.group(2))) < (1, 8)


@functools.lru_cache(maxsize=4)
def _socat_version(socat: str) -> str:
    try:
        done = subprocess.run(
            [socat, "-V"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout


def socat_tracer(log_path: Path, trace_path: Path, socat: str = "socat") -> SocatDumpTracer:
    """A (not yet started) tracer for a socat running with ``-x`` and logging to ``log_path``."""
    return SocatDumpTracer(log_path, trace_path, micro_in_nine=socat_micro_in_nine(_socat_version(socat)))


def wait_for_entries(
    path: Path,
    check: Callable[[list[TraceEntry]], Any],
    *,
    timeout: float,
    what: str,
    instance: str = "trace",
) -> Any:
    """Poll the trace until ``check(entries)`` returns something truthy (``wait_until``)."""
    from harness.waiting import wait_until

    return wait_until(
        lambda _r: check(read_trace(path)),
        instance=instance,
        what=what,
        timeout=timeout,
        log_tail=lambda: tail_text(path, 40),
    )
