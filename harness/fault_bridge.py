"""The faultable serial bridge: a PTY⇄TCP relay that traces every frame and injects faults.

It implements the same interface as ``harness.bridge.SerialBridge`` (the ``python`` bridge,
``HARNESS_BRIDGE=python``, used where socat is missing). It holds the PTY slave open
itself, so the firmware, which opens its RAPI device exactly once (firmware.md §5.4), never
sees it vanish: not on a firmware restart, not while the TCP side is down.

Bytes are cut into RAPI frames (``$…\\r``, evse.md §1); each frame goes through the
``FaultEngine`` (``harness.faults``) and is recorded in the trace when it is delivered
(``harness.trace``), so the trace is what the other side actually got. Frames are kept in
order per direction, also when delayed.

    with bridge.fault(delay_ms=600): ...                     # replies 600 ms late
    with bridge.fault(drop=2, direction="fw->evse") as f: f.wait(dropped=2)
    with bridge.fault(corrupt=1): ...                        # next reply has a bad ^CC
    with bridge.fault(stall=True): ...                       # EVSE never answers
    with bridge.fault(refuse=True): ...                      # TCP closed, not reopened
    bridge.disconnect(); bridge.wait_connected()             # a blip: closed, reopened at once
    bridge.refuse(); ...; bridge.reconnect()                 # down until reconnect()
    bridge.inject(b"\\x00\\xff~~")                            # line noise towards the firmware

Every ``fault()`` block undoes itself on exit, also on an exception: delays, counts not used
up, stalls and refusals are lifted, and a refused link is reconnected before the block
returns.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import selectors
import socket
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

from harness.bridge import replace_symlink
from harness.faults import FaultEngine, FaultError, FaultHandle, FaultPlan
from harness.trace import EVSE_TO_FW, FW_TO_EVSE, FrameSplitter, ReplyMatcher, TraceWriter, frame_command
from harness.waiting import NotYet, wait_until

RECONNECT_MIN = 0.02
RECONNECT_MAX = 0.25
PTY_BACKLOG = 65536


class FaultBridge:
    """PTY⇄TCP relay with a fault engine and a RAPI trace (one daemon thread)."""

    kind = "python"

    def __init__(
        self,
        *,
        instance: str,
        link: Path,
        rapi_host: str,
        rapi_port: int,
        log_path: Path,
        trace_path: Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.instance = instance
        self.link = link
        self.log_path = log_path
        self.trace_path = trace_path
        self.timeout = timeout
        self.address = (rapi_host, rapi_port)
        self.engine = FaultEngine()
        self.trace = TraceWriter(trace_path, match=False)  # paired here, on arrival
        self.connects = 0  # TCP connections made (1 after start)
        self.bytes = {FW_TO_EVSE: 0, EVSE_TO_FW: 0}
        self._master = -1
        self._slave = -1
        self._wake_r = -1
        self._wake_w = -1
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: str | None = None
        self._calls: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._split = {FW_TO_EVSE: FrameSplitter(), EVSE_TO_FW: FrameSplitter()}
        # Per direction: (due time, frame, fault, extra trace fields), due times non-decreasing.
        self._queues: dict[str, collections.deque[tuple[float, bytes, str | None, dict[str, object]]]] = {
            FW_TO_EVSE: collections.deque(),
            EVSE_TO_FW: collections.deque(),
        }
        self._pending_pty = b""
        self._hold_until: float | None = 0.0  # None: stay down (refused); else reconnect after
        self._reconnect_delay = RECONNECT_MIN
        self._outstanding = ReplyMatcher()  # commands as the EVSE saw them (reply pairing)
        self._connected = threading.Condition()

    # ---- logging -------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as fh:
            fh.write(f"# harness {time.strftime('%H:%M:%S')} {line}\n")

    def log_tail(self, lines: int = 60) -> str:
        from harness.waiting import tail

        return tail(self.log_path, lines)

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        replace_symlink(self.link, os.ttyname(self._slave))
        self._log(
            f"fault bridge: PTY {os.ttyname(self._slave)} linked at {self.link}; trace {self.trace_path}"
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        sock = wait_until(
            lambda remaining: self._connect(min(remaining, 2.0)),
            instance=self.instance,
            what=f"fault bridge TCP connect to {self.address[0]}:{self.address[1]}",
            timeout=self.timeout,
            log_tail=self.log_tail,
        )
        self._set_sock(sock)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.instance}-fault-bridge", daemon=True)
        self._thread.start()

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock

    def _set_sock(self, sock: socket.socket | None, why: str = "") -> None:
        """Publish the connection; logged and traced before waiters can see a new one."""
        if sock is not None:
            self._log(f"connected to {self.address[0]}:{self.address[1]}; starting data transfer loop")
            self.trace.event("tcp-connected", connects=self.connects + 1)
            self._reconnect_delay = RECONNECT_MIN
        with self._connected:
            old, self._sock = self._sock, sock
            if sock is not None:
                self.connects += 1
            self._connected.notify_all()
        if sock is None and old is not None:
            self._log(f"TCP closed: {why}")
            self.trace.event("tcp-closed", why=why)
            self._outstanding.clear()

    def recycle(self) -> None:
        """Drop bytes queued for or from the previous firmware run (it restarted)."""
        self._call(self._recycle_now)

    def _recycle_now(self) -> None:
        if self._slave >= 0:
            with contextlib.suppress(OSError):
                termios.tcflush(self._slave, termios.TCIOFLUSH)
        self._pending_pty = b""
        self._split[FW_TO_EVSE].clear()
        self._queues[EVSE_TO_FW].clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        with self._connected:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        for attr in ("_master", "_slave", "_wake_r", "_wake_w"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)
        if self.link.is_symlink():
            self.link.unlink()
        self.engine.clear()
        self.trace.close()
        self._log(
            f"stopped; bytes fw->evse={self.bytes[FW_TO_EVSE]} evse->fw={self.bytes[EVSE_TO_FW]} "
            f"connects={self.connects} faults={self.engine.totals}"
        )

    def kill(self) -> None:
        self._stop.set()
        self._wake()

    def alive(self) -> str | None:
        if self._error:
            return self._error
        if self._thread is None or not self._thread.is_alive():
            return "relay thread not running"
        return None

    def pid(self) -> int | None:
        return None

    def transfer_started(self) -> bool:
        return self._sock is not None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def describe(self) -> str:
        return f"python fault bridge in pid {os.getpid()}"

    # ---- control from other threads ------------------------------------------------------

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _call(self, fn: Callable[[], None], timeout: float = 5.0) -> None:
        """Run ``fn`` in the relay thread (it owns the sockets) and wait for it."""
        if self._thread is None or not self._thread.is_alive():
            fn()
            return
        done = threading.Event()
        self._calls.put((fn, done))
        self._wake()
        if not done.wait(timeout):
            raise FaultError(f"[{self.instance}] fault bridge did not act within {timeout:.1f}s")

    def _close_tcp(self, why: str, hold: float | None) -> None:
        sock = self._sock
        self._hold_until = None if hold is None else time.monotonic() + hold
        if sock is not None:
            self._set_sock(None, why)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def disconnect(self, down_for: float = 0.0) -> None:
        """Close the TCP side now; the relay connects again after ``down_for`` seconds."""
        self._call(lambda: self._close_tcp(f"disconnect() for {down_for:g}s", down_for))

    def refuse(self) -> None:
        """Close the TCP side and stay down until ``reconnect()`` (no reconnect attempts)."""
        self._call(lambda: self._close_tcp("refuse()", None))

    def reconnect(self, timeout: float | None = None) -> None:
        """Lift a refusal or hold and wait until the TCP side is connected again."""

        def lift() -> None:
            if not self.engine.refusing:
                self._hold_until = 0.0

        self._call(lift)
        self.wait_connected(timeout)

    def wait_connected(self, timeout: float | None = None) -> None:
        limit = self.timeout if timeout is None else timeout

        def check(_: float) -> bool:
            if self._sock is None:
                raise NotYet(
                    f"not connected to {self.address[0]}:{self.address[1]} (connects={self.connects})"
                )
            return True

        wait_until(
            check,
            instance=self.instance,
            what="fault bridge TCP reconnect",
            timeout=limit,
            alive=self.alive,
            log_tail=self.log_tail,
        )

    def retarget(self, host: str, port: int) -> None:
        """Connect to another address from now on (an emulator that moved); reconnects."""
        self.address = (host, port)
        self.disconnect()

    @contextlib.contextmanager
    def fault(
        self,
        *,
        delay_ms: float = 0.0,
        drop: int = 0,
        corrupt: int = 0,
        stall: bool = False,
        refuse: bool = False,
        direction: str = EVSE_TO_FW,
    ) -> Iterator[FaultHandle]:
        """Apply a fault plan for the block (see the module doc); always undone on exit."""
        plan = FaultPlan(
            delay_ms=delay_ms, drop=drop, corrupt=corrupt, stall=stall, refuse=refuse, direction=direction
        )
        token = self.engine.push(plan)
        # settle: one turn of the relay thread, which traces each frame it counted in the same turn.
        handle = FaultHandle(self.engine, token, plan, settle=lambda: self._call(lambda: None))
        self._log(f"fault on: {plan.describe()}")
        self.trace.event("fault-on", plan=plan.describe())
        try:
            if refuse:
                self._call(lambda: self._close_tcp("fault(refuse=True)", None))
            yield handle
        finally:
            handle.final = self.engine.pop(token)
            self._log(f"fault off: {plan.describe()}; did {handle.final}")
            self.trace.event("fault-off", plan=plan.describe(), did=handle.final)
            if refuse:
                self.reconnect()

    def inject(self, data: bytes, *, direction: str = EVSE_TO_FW) -> None:
        """Put ``data`` on the wire as if the other end had sent it: line noise, a torn frame,
        or a whole frame (``b"$AB 00 8.2.3^1F\\r"``). It goes out in order after what is
        already queued that way, bypasses the fault plans (also a refused link: noise on a dead
        line is the point), and is traced with ``fault: "injected"``. Towards the EVSE it
        needs the TCP side up (else traced ``disconnected``). Returns once it was written, or,
        behind frames a delay holds, once it is queued right after them."""
        if direction not in (EVSE_TO_FW, FW_TO_EVSE):
            raise FaultError(f"direction must be {EVSE_TO_FW!r} or {FW_TO_EVSE!r}, not {direction!r}")
        if not data:
            raise FaultError("inject() needs at least one byte")

        def put() -> None:
            now = time.monotonic()
            q = self._queues[direction]
            q.append((max(now, q[-1][0]) if q else now, data, "injected", {}))
            self._deliver_due(now)

        self._log(f"inject {direction}: {data!r}")
        self._call(put)

    # ---- the relay -----------------------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._master, selectors.EVENT_READ, "pty")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        registered: socket.socket | None = None
        try:
            while not self._stop.is_set():
                sock = self._sock
                if sock is not registered:
                    if registered is not None:
                        with contextlib.suppress(KeyError, ValueError):
                            sel.unregister(registered)
                    if sock is not None:
                        sel.register(sock, selectors.EVENT_READ, "tcp")
                    registered = sock
                if sock is None:
                    self._maybe_reconnect()
                    if self._sock is not None:
                        continue
                now = time.monotonic()
                for key, _ in sel.select(timeout=self._select_timeout(now)):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    elif key.data == "pty":
                        self._read_pty()
                    elif key.data == "tcp" and key.fileobj is self._sock:
                        self._read_tcp()
                self._run_calls()
                self._deliver_due(time.monotonic())
                if self._pending_pty:
                    self._write_pty(b"")
        except Exception as exc:  # recorded for alive(); the pair's waits report it
            self._error = f"{type(exc).__name__}: {exc}"
            self._log(f"relay stopped: {self._error}")
        finally:
            sel.close()
            self._run_calls()

    def _run_calls(self) -> None:
        while True:
            try:
                fn, done = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            finally:
                done.set()

    def _select_timeout(self, now: float) -> float:
        timeout = 0.5
        for q in self._queues.values():
            if q:
                timeout = min(timeout, max(0.0, q[0][0] - now))
        if self._pending_pty:
            timeout = min(timeout, 0.05)
        if self._sock is None and self._hold_until is not None:
            timeout = min(timeout, max(0.0, self._hold_until - now), self._reconnect_delay)
        return timeout

    def _maybe_reconnect(self) -> None:
        if self._hold_until is None or self.engine.refusing or time.monotonic() < self._hold_until:
            return
        try:
            sock = self._connect(0.5)
        except OSError:
            self._hold_until = time.monotonic() + self._reconnect_delay
            self._reconnect_delay = min(RECONNECT_MAX, self._reconnect_delay * 2)
            return
        self._set_sock(sock)

    def _read_pty(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no slave open; cannot happen while we hold one
            return
        self.bytes[FW_TO_EVSE] += len(data)
        for frame in self._split[FW_TO_EVSE].feed(data):
            self._route(FW_TO_EVSE, frame)

    def _read_tcp(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data = b""
            self._log(f"TCP error: {exc}")
        if not data:
            self._close_tcp("the emulator closed the connection", 0.0)
            self._split[EVSE_TO_FW].clear()
            return
        self.bytes[EVSE_TO_FW] += len(data)
        for frame in self._split[EVSE_TO_FW].feed(data):
            self._route(EVSE_TO_FW, frame)

    def _route(self, direction: str, frame: bytes) -> None:
        """Decide a frame's fate; swallowed frames are traced at once, the rest on delivery."""
        now = time.monotonic()
        extra: dict[str, object] = {}
        if direction == EVSE_TO_FW:
            extra = self._outstanding.reply(frame_command(frame))
        decision = self.engine.decide(direction, frame)
        if not decision.deliver:
            self.trace.frame(direction, frame, t=now, fault=decision.fault, extra=extra)
            return
        q = self._queues[direction]
        due = max(now + decision.delay, q[-1][0] if q else now)
        if decision.delay:
            extra["held_ms"] = round(decision.delay * 1000, 1)
        q.append((due, decision.frame, decision.fault, extra))
        if due <= now:
            self._deliver_due(now)

    def _deliver_due(self, now: float) -> None:
        for direction, q in self._queues.items():
            while q and q[0][0] <= now:
                _, frame, fault, extra = q.popleft()
                if direction == FW_TO_EVSE:
                    self._to_evse(frame, fault, extra)
                else:
                    self._to_firmware(frame, fault, extra)

    def _to_evse(self, frame: bytes, fault: str | None, extra: dict[str, object]) -> None:
        sock = self._sock
        t = time.monotonic()
        if sock is None:
            self.engine.note_disconnected()
            self.trace.frame(FW_TO_EVSE, frame, t=t, fault="disconnected", extra=extra)
            return
        try:
            sock.sendall(frame)
        except BlockingIOError:
            sock.setblocking(True)
            try:
                sock.sendall(frame)
            finally:
                sock.setblocking(False)
        except OSError as exc:
            self._close_tcp(f"send failed: {exc}", 0.0)
            self.trace.frame(FW_TO_EVSE, frame, t=t, fault="disconnected", extra=extra)
            return
        self._outstanding.command(frame_command(frame), t)
        self.trace.frame(FW_TO_EVSE, frame, t=t, fault=fault, extra=extra)

    def _to_firmware(self, frame: bytes, fault: str | None, extra: dict[str, object]) -> None:
        self.trace.frame(EVSE_TO_FW, frame, fault=fault, extra=extra)
        self._write_pty(frame)

    def _write_pty(self, frame: bytes) -> None:
        data = self._pending_pty + frame
        if not data:
            return
        try:
            n = os.write(self._master, data)
        except (BlockingIOError, InterruptedError):
            n = 0
        # Nobody reading (firmware stopped): a bounded backlog; recycle() drops it.
        self._pending_pty = data[n:][-PTY_BACKLOG:]
