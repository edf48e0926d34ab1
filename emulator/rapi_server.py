"""RAPI transport: a TCP server or a PTY (evse.md §5), served by one thread.

That one thread is the only writer, so a reply always precedes the ``$AT`` its command
caused (as on a real controller, whose main loop reports the state change after the
command returns). Other threads queue async frames in the model and wake this thread
through a pipe.

TCP: one client at a time. A new connection replaces the current one at once (no pause
after a disconnect), so a restarted firmware or bridge never loses its first commands.
PTY: the emulator owns the master and keeps the slave open, so clients may close and
reopen the slave freely.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import tty
from pathlib import Path

from emulator import commands, rapi
from emulator.model import Controller
from emulator.trace import Trace

log = logging.getLogger("emulator.rapi")

SEND_TIMEOUT = 2.0  # a client that does not read for this long is dropped


class RapiServer:
    def __init__(
        self,
        controller: Controller,
        trace: Trace,
        *,
        mode: str = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        pty_link: Path | None = None,
    ) -> None:
        self._controller = controller
        self._trace = trace
        self._mode = mode
        self._host, self._want_port = host, port
        self._pty_link = pty_link
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_active = False  # PTY: a client has spoken, so writes reach someone
        self._reader = rapi.FrameReader()
        self.port = 0
        self.pty_path: str | None = None
        self.clients_served = 0

    # ----- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Bind (or open the PTY) in the caller's thread, so errors surface at start."""
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self._mode == "pty":
            self._open_pty()
        else:
            listener = socket.create_server((self._host, self._want_port), reuse_port=False)
            listener.setblocking(False)
            self._listener = listener
            self.port = listener.getsockname()[1]
            self._sel.register(listener, selectors.EVENT_READ, "listen")
        self._controller.set_wakeup(self.wake)
        self._thread = threading.Thread(target=self._run, name="rapi", daemon=True)
        self._thread.start()

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass through untouched
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pty_path = os.ttyname(slave)
        if self._pty_link is not None:
            link = self._pty_link
            if link.is_symlink():
                link.unlink()
            elif link.exists():
                raise FileExistsError(f"--serial-pty-path {link} exists and is not a symlink")
            link.symlink_to(self.pty_path)
        self._sel.register(master, selectors.EVENT_READ, "master")

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._drop_client("shutdown")
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._listener is not None:
            self._listener.close()
        if self._pty_link is not None and self._pty_link.is_symlink():
            with contextlib.suppress(OSError):
                self._pty_link.unlink()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def client_connected(self) -> bool:
        return self._client is not None or self._pty_active

    # ----- the loop -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.5):
                try:
                    self._dispatch(str(key.data))
                except Exception:  # one bad client must never end the server
                    log.exception("RAPI: error serving the client; dropping it")
                    self._drop_client("error")
            self._flush_events()

    def _dispatch(self, what: str) -> None:
        if what == "wake":
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        elif what == "listen":
            self._accept()
        elif what == "client":
            self._read_client()
        elif what == "master":
            self._read_master()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, peer = self._listener.accept()
        except BlockingIOError:
            return
        if self._client is not None:
            self._drop_client("replaced by a new connection")
        sock.setblocking(True)
        sock.settimeout(SEND_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = sock
        self._reader = rapi.FrameReader()
        self._controller.discard_events()  # stale $AT; a pending $AB is kept for this client
        self._sel.register(sock, selectors.EVENT_READ, "client")
        self.clients_served += 1
        log.info("RAPI client connected from %s:%s", *peer[:2])

    def _drop_client(self, why: str) -> None:
        sock, self._client = self._client, None
        if sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        sock.close()
        log.info("RAPI client gone (%s)", why)

    def _read_client(self) -> None:
        assert self._client is not None
        try:
            data = self._client.recv(4096)
        except (ConnectionError, TimeoutError, OSError) as exc:
            self._drop_client(f"read failed: {exc}")
            return
        if not data:
            self._drop_client("closed by the client")
            return
        self._serve(data)

    def _read_master(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # cannot happen while we hold the slave; be safe
                return
            raise
        if data:
            if not self._pty_active:
                log.info("RAPI client active on %s", self.pty_path)
                self.clients_served += 1
            self._pty_active = True
            self._serve(data)

    def _serve(self, data: bytes) -> None:
        for raw in self._reader.feed(data):
            cmd = rapi.parse_command(raw)
            self._trace.record("rx", raw, cmd.code, cmd.checksum_ok)
            reply = commands.handle(self._controller, cmd)
            self._send(reply, cmd.code, "reply")
            self._flush_events()

    def _flush_events(self) -> None:
        if not self.client_connected:
            self._controller.discard_events()
            return
        for code, values in self._controller.pop_events():
            self._send(rapi.frame(" ".join([f"${code}", *values])), code, "async")

    def _send(self, data: bytes, code: str, kind: str) -> None:
        self._trace.record("tx", data, code, True, kind)
        if self._client is not None:
            try:
                self._client.sendall(data)
            except (ConnectionError, TimeoutError, OSError) as exc:
                self._drop_client(f"write failed: {exc}")
        elif self._master is not None and self._pty_active:
            try:
                os.write(self._master, data)
            except BlockingIOError:
                log.warning("RAPI: PTY full (nobody reading); dropped %r", data)
