"""A harness-like owner for the crash test: starts N emulator containers, says so, waits.

Run as a subprocess and SIGKILLed by tests/docker/test_docker_backend.py."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.emulators.base import EmulatorSpec
from harness.emulators.docker import DockerBackend


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--session", required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args()
    backend = DockerBackend(args.image)
    specs = [
        EmulatorSpec(
            instance=f"evse-{args.session}-{i}",
            index=i,
            session=args.session,
            run_dir=args.run_dir / f"i{i}",
            startup_timeout=60.0,
        )
        for i in range(args.count)
    ]
    with ThreadPoolExecutor(args.count) as pool:
        handles = list(pool.map(backend.start, specs))
    reaper = backend._reapers[args.session].proc.pid
    line = {"containers": [h.short_id for h in handles], "reaper_pid": reaper}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
