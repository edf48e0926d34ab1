"""Child processes that cannot outlive us and never block on a pipe.

Each child: its own session/process group (a terminal Ctrl-C does not hit it out of order,
and stop = ``killpg``), stdout+stderr appended to one log file (upstream W5/W6), stdin from
/dev/null (the firmware reads stdin as its serial console, firmware.md §5.4), and
``PR_SET_PDEATHSIG(SIGKILL)`` so a SIGKILLed harness leaves no orphans (engineering.md §2.b,
§3.4: 2 orphans without it, 0 with it).

PDEATHSIG fires when the *thread* that forked the child exits, not the process. Rigs start
pairs from short-lived pool threads, so every spawn is handed to one long-lived daemon
thread (``_Spawner``), which lives as long as the process. The prctl runs in a
``preexec_fn``; Python documents preexec_fn as unsafe with threads (a lock held by another
thread at fork time stays locked in the child). Ours calls one pre-resolved libc function
and ``getppid``, and glibc resets its malloc locks in the child, so the risk is accepted."""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from harness.waiting import tail

PR_SET_PDEATHSIG = 1

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl: Any = _libc.prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _prctl.restype = ctypes.c_int
except (OSError, AttributeError):  # not Linux: no parent-death signal, the state file still reaps
    _prctl = None


def _make_child_setup(parent_pid: int) -> Callable[[], None] | None:
    if _prctl is None:
        return None
    prctl = _prctl
    sig = int(signal.SIGKILL)

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return setup


class _Spawner:
    """One daemon thread that performs every fork, so PDEATHSIG tracks the process lifetime."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="harness-spawner", daemon=True)
                self._thread.start()
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[Any] = Future()
        self._jobs.put((fn, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed back to the caller's thread
                fut.set_exception(exc)


_spawner = _Spawner()

SpawnHook = Callable[[int], None]


def describe_returncode(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


class ManagedProcess:
    """A child process with a log file, its own process group and a parent-death signal."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        on_spawn: SpawnHook | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self._on_spawn = on_spawn
        self._on_exit = on_exit
        self._popen: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.log_offset = 0  # size of the log when this run started (restarts append)

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> ManagedProcess:
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.log_offset = os.fstat(fd).st_size
            header = f"# harness {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n"
            os.write(fd, header.encode())
            self.log_offset += len(header.encode())
            parent = os.getpid()

            def spawn() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    self.argv,
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=fd,
                    start_new_session=True,
                    preexec_fn=_make_child_setup(parent),
                    close_fds=True,
                )

            popen: subprocess.Popen[bytes] = _spawner.run(spawn)
        finally:
            os.close(fd)
        with self._lock:
            self._popen = popen
        if self._on_spawn is not None:
            self._on_spawn(popen.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        with self._lock:
            return self._popen.poll() if self._popen is not None else None

    def running(self) -> bool:
        with self._lock:
            return self._popen is not None and self._popen.poll() is None

    def alive(self) -> str | None:
        """None while running, else how it ended (the fail-fast probe of ``wait_until``)."""
        with self._lock:
            if self._popen is None:
                return "not started"
            rc = self._popen.poll()
        return None if rc is None else describe_returncode(rc)

    def wait(self, timeout: float | None = None) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.wait(timeout)

    def signal_group(self, sig: int) -> bool:
        """Signal our child's process group while the leader is unreaped (so the pid cannot
        have been reused). Returns False when it had already exited."""
        with self._lock:
            if self._popen is None or self._popen.poll() is not None:
                return False
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)
            return True

    def stop(self, timeout: float = 3.0) -> int | None:
        """SIGTERM the group, wait, then SIGKILL; idempotent. Returns the exit code."""
        if self._popen is None:
            return None
        try:
            if self.signal_group(signal.SIGTERM):
                try:
                    self._popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.signal_group(signal.SIGKILL)
                    self._popen.wait(5.0)
            return self._popen.returncode
        finally:
            if self._on_exit is not None and self._popen.returncode is not None:
                self._on_exit()

    def kill(self) -> None:
        """SIGKILL at once (a second Ctrl-C)."""
        self.signal_group(signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def log_since_start(self, max_bytes: int = 1 << 20) -> str:
        """What this run (not an earlier one) wrote to the log, bounded."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self.log_offset)
                return fh.read(max_bytes).decode("utf-8", "replace")
        except OSError:
            return ""

    # ---- context managers -------------------------------------------------------------

    def __enter__(self) -> ManagedProcess:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def stopped(self, timeout: float = 3.0) -> Iterator[ManagedProcess]:
        """Stopped for the block's duration and started again after it (fault tests)."""
        self.stop(timeout)
        try:
            yield self
        finally:
            self.start()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, {self.alive() or 'running'})"
