"""Flags and environment (docs/architecture.md "Emulator process contract", evse.md §6).

Upstream names are accepted as env (``SERIAL_MODE``, ``SERIAL_TCP_PORT``, ``SERIAL_PTY_PATH``,
``WEB_HOST``, ``WEB_PORT``) and as flags; ours add ``RAPI_HOST``, ``--trace``, ``--tick-ms``
and ``--mcu-id``. A flag beats its env variable; port 0 lets the kernel choose.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Config:
    serial_mode: Literal["tcp", "pty"] = "tcp"
    rapi_host: str = "127.0.0.1"
    rapi_port: int = 8023
    pty_path: Path | None = None
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    trace: Path | None = None
    tick_ms: int = 100
    mcu_id: str | None = None
    firmware_version: str = "8.2.2"
    protocol_version: str = "5.2.1"
    log_level: str = "INFO"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {value}")
    return value


def _tick(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"tick must be 1..1000 ms: {value}")
    return value


def _mcu_id(text: str) -> str:
    if not text or len(text) > 16 or not text.isascii() or not text.isalnum():
        raise argparse.ArgumentTypeError(f"MCU id must be 1..16 ASCII letters/digits: {text!r}")
    return text


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openevse-emulator",
        description="OpenEVSE controller emulator: RAPI over TCP or a PTY, plus the control API.",
    )
    e = env.get
    p.add_argument("--serial-mode", choices=("tcp", "pty"), default=e("SERIAL_MODE", "tcp"))
    p.add_argument("--rapi-host", default=e("RAPI_HOST", "127.0.0.1"), help="RAPI TCP bind address")
    p.add_argument("--serial-tcp-port", type=_port, default=e("SERIAL_TCP_PORT", "8023"))
    p.add_argument("--serial-pty-path", default=e("SERIAL_PTY_PATH"), help="symlink to the PTY slave")
    p.add_argument("--web-host", default=e("WEB_HOST", "127.0.0.1"))
    p.add_argument("--web-port", type=_port, default=e("WEB_PORT", "8080"))
    p.add_argument("--trace", default=e("EMULATOR_TRACE"), help="write a JSON-lines RAPI trace here")
    p.add_argument("--tick-ms", type=_tick, default=e("EMULATOR_TICK_MS", "100"))
    p.add_argument("--mcu-id", type=_mcu_id, default=e("EMULATOR_MCU_ID"), help="the $GI id")
    p.add_argument("--firmware-version", default=e("EMULATOR_FIRMWARE_VERSION", "8.2.2"))
    p.add_argument("--protocol-version", default=e("EMULATOR_PROTOCOL_VERSION", "5.2.1"))
    p.add_argument("--log-level", default=e("EMULATOR_LOG_LEVEL", "INFO"))
    return p


def parse(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse flags over env; exits 2 with a message on bad input (argparse)."""
    env = os.environ if env is None else env
    parser = build_parser(env)
    ns = parser.parse_args(argv)
    if ns.serial_mode not in ("tcp", "pty"):  # an env default bypasses argparse's choices
        parser.error(f"SERIAL_MODE must be tcp or pty, not {ns.serial_mode!r}")
    for name in ("firmware_version", "protocol_version"):
        value = getattr(ns, name)
        if not value or " " in value or not value.isascii():
            parser.error(f"--{name.replace('_', '-')} must be one ASCII word, not {value!r}")
    if ns.mcu_id is not None:
        try:
            _mcu_id(ns.mcu_id)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    return Config(
        serial_mode=ns.serial_mode,
        rapi_host=ns.rapi_host,
        rapi_port=ns.serial_tcp_port,
        pty_path=Path(ns.serial_pty_path) if ns.serial_pty_path else None,
        web_host=ns.web_host,
        web_port=ns.web_port,
        trace=Path(ns.trace) if ns.trace else None,
        tick_ms=ns.tick_ms,
        mcu_id=ns.mcu_id,
        firmware_version=ns.firmware_version,
        protocol_version=ns.protocol_version,
        log_level=ns.log_level.upper(),
    )
