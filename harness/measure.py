"""Time to a ready rig (every pair's EVSE link up) and teardown time, per rig size.

    python -m harness.measure [--sizes 1,2,4,8] [--repeat 3] [--json]

A measurement, not a test: it asserts nothing. Prerequisite checks (`--help` of the
firmware) run once before the first timing, as in a pytest session."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.rig import Rig
from harness.settings import Settings


def measure(settings: Settings, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    settings.check()
    rows = []
    for n in sizes:
        starts, stops = [], []
        for _ in range(repeat):
            rig = Rig(settings, n)
            t0 = time.monotonic()
            rig.start()
            t1 = time.monotonic()
            rig.close()
            t2 = time.monotonic()
            starts.append(t1 - t0)
            stops.append(t2 - t1)
        rows.append(
            {
                "pairs": n,
                "start_median_s": round(statistics.median(starts), 3),
                "start_max_s": round(max(starts), 3),
                "teardown_median_s": round(statistics.median(stops), 3),
                "teardown_max_s": round(max(stops), 3),
                "runs": repeat,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.measure")
    p.add_argument("--sizes", default="1,2,4,8")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--bridge", choices=["socat", "python", "auto"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="harness-measure-") as tmp:
        settings = Settings.from_env(bridge=args.bridge, run_dir=str(Path(tmp) / "run"))
        rows = measure(settings, [int(s) for s in args.sizes.split(",")], args.repeat)
    out = sys.stdout
    if args.json:
        out.write(json.dumps(rows) + "\n")
        return 0
    out.write(f"firmware: {settings.firmware_description()}\n")
    out.write(f"emulator: {settings.emulator_description()}; bridge {settings.resolved_bridge()}\n")
    out.write("pairs  ready median (max)   teardown median (max)\n")
    for r in rows:
        out.write(
            f"{r['pairs']:>5}  {r['start_median_s']:>6.2f}s ({r['start_max_s']:.2f}s)"
            f"      {r['teardown_median_s']:>5.2f}s ({r['teardown_max_s']:.2f}s)\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
