"""`openevse-sim` / `python -m openevse_sim`: parse the command line and run (firmware.md §5.2)."""

from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    from openevse_sim.cli import CliExit, parse_args

    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except CliExit as exc:
        return exc.code
    from openevse_sim.app import main_async

    try:
        return main_async(opts, started)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
