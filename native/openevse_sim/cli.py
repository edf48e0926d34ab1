"""Command line and environment (firmware.md §5.2): flags, messages, exit codes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

DEFAULT_RAPI_PATH = "/tmp/rapi_pty"  # noqa: S108 - the real firmware's default (§0)
NAME_MAX = 64

USAGE = """Usage: {prog} [options] [--] [args...]

Options:
  -h, --help                 Show this help and exit
  --rapi-serial PATH         RAPI serial (PTY) path (alias: --rapi)
  --set-config NAME=VALUE    Override a config option (repeatable)

Environment:
  OPENEVSE_CHIP_ID           64-bit chip id (0x... or hex), sets the device id
  RAPI_SERIAL_PORT           RAPI serial path when no flag is given
  EPOXY_EEPROM_DATA          config image file (default ./epoxyeepromdata)
  EPOXY_FS_ROOT              file system root (default ./epoxyfsdata)
"""


class CliExit(Exception):
    """Parsing ended the program: `code` is the exit status (0 for --help, 1 for errors)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class CliOptions:
    rapi_path: str
    rapi_from_flag: bool
    set_config: list[tuple[str, str]] = field(default_factory=list)
    unknown_flag: str | None = None  # reported after the config is loaded, as the real binary does
    args: list[str] = field(default_factory=list)


def usage(prog: str) -> str:
    return USAGE.format(prog=prog)


def parse_args(argv: list[str], env: dict[str, str] | None = None, err: TextIO | None = None) -> CliOptions:
    """Parse argv (without the program name). Raises CliExit for --help and hard errors.

    An unknown flag does not raise here: the real binary reports it after loading the config,
    so the caller checks `unknown_flag` at that point (§5.2)."""
    env = dict(os.environ) if env is None else env
    err = sys.stderr if err is None else err
    prog = "openevse-sim"
    opts = CliOptions(rapi_path=env.get("RAPI_SERIAL_PORT") or DEFAULT_RAPI_PATH, rapi_from_flag=False)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            opts.args = argv[i + 1 :]
            break
        if not arg.startswith("-") or arg == "-":
            opts.args = argv[i:]
            break
        if arg in ("-h", "--help"):
            err.write(usage(prog))
            err.flush()
            raise CliExit(0)
        if arg in ("--rapi-serial", "--rapi"):
            if i + 1 >= len(argv):
                err.write(f"Missing value for {arg}\n")
                err.write(usage(prog))
                raise CliExit(1)
            opts.rapi_path = argv[i + 1]
            opts.rapi_from_flag = True
            err.write(f"Set RAPI serial path: {opts.rapi_path}\n")
            i += 2
            continue
        if arg == "--set-config":
            if i + 1 >= len(argv):
                err.write("Missing value for --set-config\n")
                err.write(usage(prog))
                raise CliExit(1)
            spec = argv[i + 1]
            name, sep, value = spec.partition("=")
            if not sep or not name or len(name) >= NAME_MAX:
                err.write(f"Invalid --set-config value '{spec}', expected NAME=VALUE\n")
                err.write(usage(prog))
                raise CliExit(1)
            opts.set_config.append((name, value))
            i += 2
            continue
        if opts.unknown_flag is None:
            opts.unknown_flag = arg
        i += 1
    return opts


def report_unknown_flag(flag: str, err: TextIO | None = None) -> None:
    err = sys.stderr if err is None else err
    err.write(f"Unknown flag '{flag}'\n")
    err.write(usage("openevse-sim"))
    err.flush()
