"""The serial bridge: a PTY the firmware opens as its RAPI port, relayed to the emulator's TCP.

Two implementations with one interface (``SerialBridge``):

- ``SocatBridge``: ``socat -d -d PTY,link=<inst>/rapi.pty,rawer,wait-slave,pty-interval=0.01
  TCP:127.0.0.1:<rapi>`` (engineering.md §3.2). With ``wait-slave`` socat creates the link at
  once but connects TCP only after the firmware opens the slave, so readiness before the
  firmware starts is "link exists and socat alive"; "starting data transfer loop" in its log
  follows once the firmware is up. ``pty-interval`` (default 1 s) is how often socat polls for
  the slave: at 1 s the firmware's first RAPI request could time out (firmware.md §5.4).
  socat exits when the slave closes (upstream W8), and the firmware opens its PTY exactly
  once, so the bridge is supervised: an unexpected exit is logged and socat restarted, and
  ``recycle()`` gives a restarted firmware a fresh socat and link.
- ``PythonBridge``: an in-process PTY⇄TCP relay for machines without socat. It keeps the
  slave open itself, so a firmware restart just works; a ``FrameHook`` can see every RAPI
  frame (``\\r``-terminated) in each direction, the seam for later fault injection.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from harness.procs import ManagedProcess, SpawnHook
from harness.waiting import NotYet, wait_until

TO_EVSE = "to_evse"  # firmware → emulator
TO_FIRMWARE = "to_firmware"  # emulator → firmware

# Given a direction and one complete frame, return the frames to pass on (none = drop).
FrameHook = Callable[[str, bytes], list[bytes]]


class SerialBridge(Protocol):
    kind: str
    link: Path
    log_path: Path

    def start(self) -> None: ...
    def recycle(self) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def alive(self) -> str | None: ...
    def pid(self) -> int | None: ...
    def describe(self) -> str: ...


def _append(path: Path, line: str) -> None:
    with path.open("a") as fh:
        fh.write(f"# harness {time.strftime('%H:%M:%S')} {line}\n")


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


class SocatBridge:
    """socat, supervised: restarted when it exits while the pair is up."""

    kind = "socat"

    def __init__(
        self,
        *,
        instance: str,
        link: Path,
        rapi_host: str,
        rapi_port: int,
        log_path: Path,
        timeout: float = 5.0,
        on_spawn: SpawnHook | None = None,
        on_exit: Callable[[], None] | None = None,
        socat: str = "socat",
    ) -> None:
        self.instance = instance
        self.link = link
        self.log_path = log_path
        self.timeout = timeout
        self.argv = [
            socat,
            "-d",
            "-d",
            "-x",  # hex dump of every transfer: harness.trace.SocatDumpTracer reads it
            f"PTY,link={link},rawer,wait-slave,pty-interval=0.01",
            f"TCP:{rapi_host}:{rapi_port}",
        ]
        self._on_spawn = on_spawn
        self._on_exit = on_exit
        self._proc: ManagedProcess | None = None
        self._want = False
        self._cond = threading.Condition()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0  # unexpected exits that were restarted

    def _spawn_locked(self) -> ManagedProcess:
        # A SIGKILLed socat leaves a dangling link; ours only, inside our private dir.
        if self.link.is_symlink():
            self.link.unlink()
        proc = ManagedProcess(
            f"{self.instance} bridge",
            self.argv,
            log_path=self.log_path,
            on_spawn=self._on_spawn,
            on_exit=self._on_exit,
        ).start()
        self._proc = proc
        self._cond.notify_all()
        return proc

    def _wait_link(self, proc: ManagedProcess) -> None:
        def check(_: float) -> bool:
            if not self.link.is_symlink():
                raise NotYet(f"{self.link} does not exist yet")
            return True

        wait_until(
            check,
            instance=self.instance,
            what="socat PTY link",
            timeout=self.timeout,
            alive=proc.alive,
            log_tail=proc.log_tail,
        )

    def start(self) -> None:
        with self._cond:
            self._want = True
            proc = self._spawn_locked()
        self._wait_link(proc)
        if self._supervisor is None:
            self._supervisor = threading.Thread(
                target=self._supervise, name=f"{self.instance}-bridge-supervisor", daemon=True
            )
            self._supervisor.start()

    def recycle(self) -> None:
        """A fresh socat and link for the next firmware run (the old one saw the slave close)."""
        with self._cond:
            old, self._proc = self._proc, None
        if old is not None:
            old.stop(2.0)
        with self._cond:
            if not self._want:
                return
            proc = self._spawn_locked()
        self._wait_link(proc)

    def _supervise(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while self._want and self._proc is None:
                    self._cond.wait()
                if not self._want:
                    return
                proc = self._proc
            assert proc is not None
            started = time.monotonic()
            with contextlib.suppress(Exception):
                proc.wait()
                proc.stop()  # already exited: reaps it and drops it from the state file
            with self._cond:
                if not self._wanted() or proc is not self._proc:
                    continue
                self._proc = None
            failures = failures + 1 if time.monotonic() - started < 1.0 else 1
            self.restarts += 1
            delay = min(2.0, 0.05 * 2 ** min(failures, 6))
            _append(self.log_path, f"socat exited ({proc.alive()}); restarting in {delay:.2f}s")
            with self._cond:
                self._cond.wait(delay)  # woken early by stop()
                if self._wanted() and self._proc is None:
                    with contextlib.suppress(Exception):
                        self._spawn_locked()

    def _wanted(self) -> bool:
        """Re-read under the lock (another thread changes it; a method defeats narrowing)."""
        return self._want

    def transfer_started(self) -> bool:
        """socat's "starting data transfer loop": TCP connected and the slave is open."""
        proc = self._proc
        return proc is not None and "starting data transfer loop" in proc.log_since_start()

    def stop(self) -> None:
        with self._cond:
            self._want = False
            proc, self._proc = self._proc, None
            self._cond.notify_all()
        if proc is not None:
            proc.stop(2.0)
        if self._supervisor is not None:
            self._supervisor.join(5.0)
            self._supervisor = None
        if self.link.is_symlink():
            self.link.unlink()

    def kill(self) -> None:
        with self._cond:
            self._want = False
            self._cond.notify_all()
            proc = self._proc
        if proc is not None:
            proc.kill()

    def alive(self) -> str | None:
        proc = self._proc
        return "socat not running" if proc is None else proc.alive()

    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def log_tail(self, lines: int = 60) -> str:
        from harness.waiting import tail

        return tail(self.log_path, lines)

    def describe(self) -> str:
        return f"socat pid {self.pid()}"


class PythonBridge:
    """In-process PTY⇄TCP relay; keeps the slave open, so firmware restarts need nothing."""

    kind = "python"

    def __init__(
        self,
        *,
        instance: str,
        link: Path,
        rapi_host: str,
        rapi_port: int,
        log_path: Path,
        timeout: float = 5.0,
        frame_hook: FrameHook | None = None,
    ) -> None:
        self.instance = instance
        self.link = link
        self.log_path = log_path
        self.timeout = timeout
        self.address = (rapi_host, rapi_port)
        self.frame_hook = frame_hook
        self._master = -1
        self._slave = -1
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._error: str | None = None
        self._buffers = {TO_EVSE: b"", TO_FIRMWARE: b""}
        self._pending_pty = b""
        self.bytes = {TO_EVSE: 0, TO_FIRMWARE: 0}

    def _log(self, line: str) -> None:
        _append(self.log_path, line)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        _replace_symlink(self.link, os.ttyname(self._slave))
        self._log(f"PTY {os.ttyname(self._slave)} linked at {self.link}")
        self._sock = wait_until(
            lambda remaining: self._connect(min(remaining, 2.0)),
            instance=self.instance,
            what=f"python bridge TCP connect to {self.address[0]}:{self.address[1]}",
            timeout=self.timeout,
            log_tail=self.log_tail,
        )
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.instance}-bridge", daemon=True)
        self._thread.start()

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._log(f"connected to {self.address[0]}:{self.address[1]}; starting data transfer loop")
        return sock

    def recycle(self) -> None:
        """Drop bytes queued for or from the previous firmware run."""
        if self._slave >= 0:
            with contextlib.suppress(OSError):
                termios.tcflush(self._slave, termios.TCIOFLUSH)
        self._pending_pty = b""
        self._buffers = {TO_EVSE: b"", TO_FIRMWARE: b""}

    def _frames(self, direction: str, data: bytes) -> bytes:
        """Pass-through, or per-frame through the hook when one is set."""
        self.bytes[direction] += len(data)
        hook = self.frame_hook
        if hook is None:
            return data
        buf = self._buffers[direction] + data
        out: list[bytes] = []
        while (cut := buf.find(b"\r")) >= 0:
            frame, buf = buf[: cut + 1], buf[cut + 1 :]
            out.extend(hook(direction, frame))
        self._buffers[direction] = buf
        return b"".join(out)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._master, selectors.EVENT_READ, "pty")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sock = self._sock
        if sock is not None:
            sel.register(sock, selectors.EVENT_READ, "tcp")
        try:
            while not self._stop.is_set():
                if sock is None:
                    sock = self._reconnect()
                    if sock is None:
                        continue
                    sel.register(sock, selectors.EVENT_READ, "tcp")
                for key, _ in sel.select(timeout=0.5):
                    if key.data == "wake":
                        return
                    if key.data == "pty":
                        try:
                            data = os.read(self._master, 65536)
                        except BlockingIOError:
                            continue
                        except OSError as exc:
                            if exc.errno == errno.EIO:  # no slave open: cannot happen, we hold one
                                continue
                            raise
                        payload = self._frames(TO_EVSE, data)
                        if payload:
                            try:
                                sock.sendall(payload)  # small frames; the kernel buffer takes them
                            except BlockingIOError:
                                sock.setblocking(True)
                                sock.sendall(payload)
                                sock.setblocking(False)
                    elif key.data == "tcp":
                        try:
                            data = sock.recv(65536)
                        except BlockingIOError:
                            continue
                        except OSError as exc:
                            data = b""
                            self._log(f"TCP error: {exc}")
                        if not data:
                            self._log("emulator closed the TCP connection; reconnecting")
                            sel.unregister(sock)
                            sock.close()
                            sock = self._sock = None
                            break
                        self._write_pty(self._frames(TO_FIRMWARE, data))
        except Exception as exc:  # recorded for alive(); the pair's readiness wait reports it
            self._error = f"{type(exc).__name__}: {exc}"
            self._log(f"relay stopped: {self._error}")
        finally:
            sel.close()

    def _write_pty(self, data: bytes) -> None:
        data = self._pending_pty + data
        try:
            n = os.write(self._master, data) if data else 0
        except BlockingIOError:
            n = 0
        # Nobody reading (firmware stopped): keep a bounded backlog, recycle() drops it.
        self._pending_pty = data[n:][-65536:]

    def _reconnect(self) -> socket.socket | None:
        delay = 0.05
        while not self._stop.is_set():
            try:
                sock = self._connect(2.0)
            except OSError:
                self._stop.wait(delay)
                delay = min(1.0, delay * 2)
                continue
            self._sock = sock
            return sock
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for attr in ("_master", "_slave", "_wake_r", "_wake_w"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)
        if self.link.is_symlink():
            self.link.unlink()
        self._log(f"stopped; bytes to_evse={self.bytes[TO_EVSE]} to_firmware={self.bytes[TO_FIRMWARE]}")

    def kill(self) -> None:
        self._stop.set()

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

    def log_tail(self, lines: int = 60) -> str:
        from harness.waiting import tail

        return tail(self.log_path, lines)

    def describe(self) -> str:
        return f"python relay in pid {os.getpid()}"
