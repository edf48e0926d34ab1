"""A harness-like owner for the crash test: starts N emulator containers, says so, waits.

Run as a script, or through pytest (crash_target.py), and SIGKILLed by
test_docker_backend.py::test_killed_owner_leaves_no_container_within_5s."""

from __future__ import annotations

import argparse
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.emulators.base import EmulatorSpec
from harness.emulators.docker import DockerBackend


def hold_containers(session: str, run_dir: Path, image: str, count: int, announce: Path) -> None:
    """Start ``count`` emulators, write their ids to ``announce``, then block until killed."""
    backend = DockerBackend(image)
    specs = [
        EmulatorSpec(
            instance=f"evse-{session}-{i}",
            index=i,
            session=session,
            run_dir=run_dir / f"i{i}",
            startup_timeout=60.0,
        )
        for i in range(count)
    ]
    with ThreadPoolExecutor(count) as pool:
        handles = list(pool.map(backend.start, specs))
    line = {
        "pid": os.getpid(),
        "containers": [h.short_id for h in handles],
        "reaper_pid": backend._reapers[session].proc.pid,
    }
    partial = announce.with_suffix(".partial")
    partial.write_text(json.dumps(line) + "\n")
    partial.rename(announce)  # appears whole
    threading.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--session", required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--announce", type=Path, required=True)
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args()
    hold_containers(args.session, args.run_dir, args.image, args.count, args.announce)


if __name__ == "__main__":
    main()
