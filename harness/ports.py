"""TCP ports the harness must choose itself (the firmware's `www_http_port`).

engineering.md §2.a: `bind(0)`+close races across xdist workers, so ports come from a
block below the kernel's ephemeral range (32768+, also Docker's), offset by the xdist
worker; each candidate is taken with an exclusive ``flock`` on ``<run root>/ports/<port>.lock``
held for the lease's lifetime (the kernel drops it when the holder dies, so a crash leaves
no stale reservation and two concurrent runs coordinate), then probed with a bind *without*
SO_REUSEADDR on all addresses, which also fails for a port in use or in TIME_WAIT (W18)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from harness.errors import HarnessError
from harness.runstate import ensure_private_dir

LOW = 1024
HIGH = 32767  # keep below the ephemeral range (32768-60999 here)


class PortLease:
    """One reserved port; the lock is held until ``release()`` (or the process dies)."""

    def __init__(
        self, port: int, fd: int, lock_path: Path, on_release: Callable[[int], None] | None = None
    ) -> None:
        self.port = port
        self._fd: int | None = fd
        self.lock_path = lock_path
        self._on_release = on_release

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # The lock file stays: unlinking it would let two holders lock different inodes.
            os.close(fd)
            if self._on_release is not None:
                self._on_release(self.port)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> PortLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"PortLease({self.port}, held={self.held})"


def port_is_free(port: int) -> bool:
    """Bind 0.0.0.0:port without SO_REUSEADDR: fails if anyone listens on any address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))  # bind only, never listen: nothing is exposed  # noqa: S104
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out leases from this worker's block first, then from the rest of the range."""

    def __init__(self, lock_dir: Path, *, base: int = 20000, block: int = 200, worker: int = 0) -> None:
        if not LOW <= base <= HIGH:
            raise ValueError(f"port base {base} outside {LOW}..{HIGH}")
        self.lock_dir = ensure_private_dir(lock_dir)
        self.base = base
        self.block = block
        self.worker = worker
        self._local = threading.Lock()
        self._held: set[int] = set()  # flock is per open file, so also guard within this process

    def candidates(self) -> list[int]:
        span = HIGH - self.base + 1
        start = (self.worker * self.block) % span
        return [self.base + (start + k) % span for k in range(span)]

    def acquire(self, avoid: set[int] | None = None) -> PortLease:
        """The first port of our block that we can lock and that is free right now."""
        avoid = avoid or set()
        for port in self.candidates():
            if port in avoid:
                continue
            lease = self._try(port)
            if lease is not None:
                return lease
        raise HarnessError(f"no free port in {self.base}..{HIGH} (locks in {self.lock_dir})")

    def _try(self, port: int) -> PortLease | None:
        with self._local:
            if port in self._held:
                return None
            path = self.lock_dir / f"{port}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    return None
                raise
            if not port_is_free(port):
                os.close(fd)
                return None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            self._held.add(port)
        return PortLease(port, fd, path, self._forget)

    def _forget(self, port: int) -> None:
        with self._local:
            self._held.discard(port)


def looks_like_address_in_use(text: str) -> bool:
    """Did a child fail because its port was taken after our probe (retry on another)?"""
    lowered = text.lower()
    return "address already in use" in lowered or "eaddrinuse" in lowered or "errno 98" in lowered
