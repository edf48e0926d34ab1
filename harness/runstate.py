"""Run root, session directories and the state file that makes a crash reapable.

Layout (docs/architecture.md): ``<run root>/sessions/<session>/state.json`` plus one dir per
instance. The state file names the owner (pid + start time) and every child (pid + start
time), PTY link and container, so ``harness down`` can clean up after a SIGKILLed owner and
never touch a process that merely reuses a pid (engineering.md §2.b)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

STATE_FILE = "state.json"


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22), None if gone.

    A (pid, start time) pair names one process for the life of the machine."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        if rest[0] == b"Z":  # a zombie is dead for our purposes
            return None
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def same_process(pid: int, start: int | None) -> bool:
    """True when ``pid`` still runs and is the process that had start time ``start``."""
    return start is not None and pid > 0 and proc_start_time(pid) == start


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700; refuse a symlink or another owner's dir."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise HarnessError(f"{path} must be a directory, not a symlink or file")
    if st.st_uid != os.geteuid():
        raise HarnessError(f"{path} belongs to uid {st.st_uid}, not to us; set HARNESS_RUN_DIR")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def sessions_dir(run_root: Path) -> Path:
    return run_root / "sessions"


class SessionState:
    """The live state file of one session; every change is written atomically at once."""

    def __init__(
        self, run_root: Path, session: str, *, argv: list[str] | None = None, kind: str = "library"
    ) -> None:
        ensure_private_dir(run_root)
        ensure_private_dir(sessions_dir(run_root))
        self.session = session
        self.dir = ensure_private_dir(sessions_dir(run_root) / session)
        self.path = self.dir / STATE_FILE
        self._lock = threading.Lock()
        self._frozen = False
        pid = os.getpid()
        self.data: dict[str, Any] = {
            "session": session,
            "owner_pid": pid,
            "owner_start": proc_start_time(pid),
            "owner_argv": argv or [],
            "kind": kind,  # cli | pytest | library: `harness down` stops only cli owners unasked
            "created": time.time(),
            "children": {},  # key -> {pid, start, role, instance}
            "links": [],
            "containers": [],
            "instances": {},  # index -> facts for `harness status`/`logs`
        }
        self._write()

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the state; safe from a signal handler (never blocks for long)."""
        got = self._lock.acquire(timeout=1.0)
        try:
            copied: dict[str, Any] = json.loads(json.dumps(self.data))
            return copied
        finally:
            if got:
                self._lock.release()

    def freeze(self) -> None:
        """No more writes (a forced stop is about to delete the dir; a late write would race).

        No lock: this runs from a signal handler; a write already under way just finishes,
        and ``remove_tree`` retries past it."""
        self._frozen = True

    def _write(self) -> None:
        if self._frozen:
            return
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True)
        tmp.replace(self.path)

    def add_child(self, key: str, pid: int, *, role: str, instance: str) -> None:
        with self._lock:
            self.data["children"][key] = {
                "pid": pid,
                "start": proc_start_time(pid),
                "role": role,
                "instance": instance,
            }
            self._write()

    def remove_child(self, key: str) -> None:
        with self._lock:
            if self.data["children"].pop(key, None) is not None:
                self._write()

    def add_link(self, path: Path) -> None:
        with self._lock:
            if str(path) not in self.data["links"]:
                self.data["links"].append(str(path))
                self._write()

    def add_container(self, container_id: str) -> None:
        with self._lock:
            if container_id not in self.data["containers"]:
                self.data["containers"].append(container_id)
                self._write()

    def remove_container(self, container_id: str) -> None:
        with self._lock:
            if container_id in self.data["containers"]:
                self.data["containers"].remove(container_id)
                self._write()

    def set_instance(self, index: int, facts: dict[str, Any]) -> None:
        with self._lock:
            self.data["instances"][str(index)] = facts
            self._write()

    def remove(self) -> None:
        """Delete the session dir (the owner's normal teardown, once everything stopped)."""
        self.freeze()
        remove_tree(self.dir)


@dataclass
class SessionInfo:
    """A session found on disk."""

    session: str
    dir: Path
    data: dict[str, Any]

    @property
    def owner_pid(self) -> int:
        return int(self.data.get("owner_pid", 0))

    def owner_alive(self) -> bool:
        return same_process(self.owner_pid, self.data.get("owner_start"))


def list_sessions(run_root: Path) -> list[SessionInfo]:
    """Every session dir under the run root; an unreadable state file counts as an empty one."""
    root = sessions_dir(run_root)
    found: list[SessionInfo] = []
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.is_symlink():
            continue
        try:
            data = json.loads((entry / STATE_FILE).read_text())
        except (OSError, ValueError):
            data = {}
        found.append(SessionInfo(entry.name, entry, data))
    return found


def reap_session(info: SessionInfo) -> list[str]:
    """Kill the session's children whose (pid, start time) still match, remove its PTY links,
    containers and directory. Returns what was done, one line each. Never touches a process
    whose start time differs (pid reuse)."""
    done: list[str] = []
    killed: list[tuple[int, int]] = []
    for key, child in dict(info.data.get("children", {})).items():
        pid, start = int(child.get("pid", 0)), child.get("start")
        if not same_process(pid, start):
            continue
        # Children lead their own process group (start_new_session), so the group id is the pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            done.append(f"killed {key} (pid {pid})")
            killed.append((pid, int(start)))
    # Let them die before deleting their directories (a dying firmware may still write there).
    wait_until_true(lambda: not any(same_process(pid, start) for pid, start in killed), timeout=3.0)
    for link in info.data.get("links", []):
        p = Path(link)
        # Only links inside this session's dir: the state file is not trusted to name others.
        if p.is_symlink() and info.dir in p.parents:
            p.unlink(missing_ok=True)
            done.append(f"removed link {p}")
    if info.data.get("containers"):
        done.extend(_reap_containers(info))
    remove_tree(info.dir)
    done.append(f"removed {info.dir}" if not info.dir.exists() else f"could not remove {info.dir}")
    return done


def remove_tree(path: Path, timeout: float = 2.0) -> bool:
    """``rmtree`` that retries while a late writer re-adds entries (ENOTEMPTY races)."""

    def gone() -> bool:
        shutil.rmtree(path, ignore_errors=True)
        return not path.exists()

    return wait_until_true(gone, timeout=timeout)


def wait_until_true(check: Callable[[], bool], timeout: float) -> bool:
    """A small poll with backoff for cleanup paths (no instance to name, nothing to raise)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(0.2, delay * 1.5)


def _reap_containers(info: SessionInfo) -> list[str]:
    """Containers are the Docker backend's business: ask its reaper (imported lazily, by label)."""
    try:
        from harness.docker.engine import connect
        from harness.docker.reaper import remove_session_containers
    except ImportError as exc:
        return [f"cannot reap containers {info.data['containers']}: {exc}"]
    try:
        removed = remove_session_containers(connect(), info.session)
    except Exception as exc:  # the reap goes on: report, do not stop
        return [f"container reap failed: {exc}"]
    return [f"removed container {c}" for c in removed]


def reap_dead_sessions(run_root: Path) -> list[tuple[str, list[str]]]:
    """Reap every session whose owner is dead (pid gone or start time differs); live ones stay."""
    reaped = []
    for info in list_sessions(run_root):
        if not info.owner_alive():
            reaped.append((info.session, reap_session(info)))
    return reaped


def wait_for_gone(paths: Iterator[Path] | list[Path], timeout: float) -> bool:
    """Poll until none of ``paths`` exists (used by `harness down` on a live owner)."""
    items = list(paths)
    return wait_until_true(lambda: not any(p.exists() for p in items), timeout)
