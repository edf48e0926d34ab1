"""The labels on every container the harness creates, and who owns them.

Clean-up selects by these labels only (never by name), so nothing of anyone else is touched.
The owner's start time (``/proc/<pid>/stat`` field 22, clock ticks since boot) defeats pid
reuse: a container belongs to a dead owner when its pid is gone or now names another process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

PREFIX = "io.openevse-harness."
SESSION = PREFIX + "session"
RUN = PREFIX + "run"
INSTANCE = PREFIX + "instance"
OWNER_PID = PREFIX + "owner-pid"
OWNER_START = PREFIX + "owner-start"
# Pids mean something only on the host that wrote them; an engine may be shared.
OWNER_HOST = PREFIX + "owner-host"
# On images: the content hash of the emulator sources and the base image it was built on.
EMULATOR_HASH = PREFIX + "emulator-hash"
BASE_IMAGE_ID = PREFIX + "base-image-id"


def process_start_time(pid: int, proc: Path = Path("/proc")) -> str | None:
    """Field 22 (starttime) of ``/proc/<pid>/stat``, or None when no such process exists."""
    try:
        raw = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command (field 2) is in parentheses and may hold spaces or ')': split after the last ')'.
    rest = raw.rpartition(")")[2].split()
    # rest[0] is field 3 (state), so field 22 is rest[19].
    if len(rest) < 20:
        return None
    return rest[19]


def owner_labels(pid: int | None = None, proc: Path = Path("/proc")) -> dict[str, str]:
    """Labels naming the owning process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    start = process_start_time(pid, proc)
    if start is None:
        raise ProcessLookupError(f"no process {pid} to own containers")
    return {OWNER_PID: str(pid), OWNER_START: start, OWNER_HOST: socket.gethostname()}


def container_labels(
    *, session: str, run: str, instance: str, extra: dict[str, str] | None = None, pid: int | None = None
) -> dict[str, str]:
    """All labels of one emulator container; ``extra`` cannot override ours."""
    labels = dict(extra or {})
    labels.update({SESSION: session, RUN: run, INSTANCE: instance})
    labels.update(owner_labels(pid))
    return labels


def session_filter(session: str) -> dict[str, str]:
    """``containers.list`` filter for exactly one session's containers."""
    if not session:
        raise ValueError("an empty session id would select nothing meaningful")
    return {"label": f"{SESSION}={session}"}


def owner_is_alive(labels: dict[str, str], proc: Path = Path("/proc")) -> bool:
    """True unless the labels name an owner on this host that is provably gone.

    Containers of another host, or with unreadable owner labels, count as alive: when in
    doubt, keep."""
    if labels.get(OWNER_HOST) != socket.gethostname():
        return True
    try:
        pid = int(labels[OWNER_PID])
        start = labels[OWNER_START]
    except (KeyError, ValueError):
        return True
    return process_start_time(pid, proc) == start
