"""Crash safety for containers: a tiny host process that outlives its owner.

The Docker backend starts ``python -m harness.docker.reaper --session S`` in its own session
(so a terminal's Ctrl-C does not reach it) with a pipe on its stdin, and keeps the write end.
The reaper blocks reading that pipe. The kernel closes the write end when the owner exits for
any reason, SIGKILL included; the reaper then removes every container labelled with session S
and exits. On a normal stop the backend removes its containers itself and closes the pipe,
so the reaper finds nothing. Ryuk does the same from a container, but needs a registry pull.

``reap_dead_owner_containers`` is the after-the-fact sweep behind ``harness down``: it removes
containers whose labelled owner process is gone, and never anything without our labels.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker
from docker.errors import APIError, NotFound

from harness.docker import labels as L
from harness.docker.engine import ClientFactory, default_client

SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} reaper[{_SESSION}]: {message}\n")
    sys.stderr.flush()


_SESSION = "-"


def remove_containers(client: docker.DockerClient, filters: dict[str, str | list[str] | bool]) -> list[str]:
    """Force-remove every container matching ``filters``; returns their short ids."""
    removed = []
    # ignore_removed: another owner may remove its containers between the list and the inspect.
    for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
        try:
            container.remove(force=True)
        except NotFound:
            continue  # already gone: someone (the owner) removed it first
        removed.append(container.short_id)
    return removed


def remove_session_containers(client: docker.DockerClient, session: str) -> list[str]:
    """Remove the containers of one session (label match only, never by name)."""
    return remove_containers(client, {**L.session_filter(session)})


def reap_dead_owner_containers(
    client: docker.DockerClient | None = None,
    *,
    proc: Path = Path("/proc"),
    report: Callable[[str], None] = lambda _line: None,
) -> list[str]:
    """Remove our containers whose owner process is gone (pid dead or reused).

    Only containers carrying both our session and owner labels are looked at; live owners'
    containers and other hosts' containers are kept."""
    client = client or default_client()
    removed = []
    mine: dict[str, str | list[str] | bool] = {"label": [L.SESSION, L.OWNER_PID]}
    for container in client.containers.list(all=True, filters=mine, ignore_removed=True):
        labels = dict(container.labels)
        if L.owner_is_alive(labels, proc):
            continue
        try:
            container.remove(force=True)
        except NotFound:
            continue
        removed.append(container.short_id)
        report(
            f"removed container {container.short_id} of session {labels.get(L.SESSION)} "
            f"(owner pid {labels.get(L.OWNER_PID)} is gone)"
        )
    return removed


def sweep(client_factory: ClientFactory, session: str, *, attempts: int = 3, settle: float = 0.5) -> int:
    """Remove the session's containers, looking again after any pass that removed some.

    A create the owner sent just before it died may still complete on the engine, hence the
    second look; after a normal stop the first pass finds nothing and we exit at once."""
    total = 0
    for attempt in range(attempts):
        try:
            removed = remove_session_containers(client_factory(), session)
        except (APIError, OSError, docker.errors.DockerException) as exc:
            _log(f"sweep {attempt + 1} failed: {exc}")
        else:
            total += len(removed)
            if not removed:
                break
            _log(f"removed {len(removed)} container(s): {' '.join(removed)}")
        time.sleep(settle)
    return total


def main(argv: list[str] | None = None, client_factory: ClientFactory = default_client) -> int:
    global _SESSION
    parser = argparse.ArgumentParser(prog="python -m harness.docker.reaper", description=__doc__)
    parser.add_argument("--session", required=True, help="the session id whose containers to remove")
    args = parser.parse_args(argv)
    if not SESSION_RE.match(args.session):
        parser.error(f"not a session id: {args.session!r}")
    _SESSION = args.session
    # The owner's death, not a signal to its process group, is what ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _log("watching; removes this session's containers when its owner's pipe closes")
    try:
        while sys.stdin.buffer.read(4096):
            pass  # the owner never writes; data would only be noise
    finally:
        _log("owner gone (stdin closed); sweeping")
        count = sweep(client_factory, args.session)
        _log(f"done, {count} container(s) removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
