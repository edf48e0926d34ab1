"""The serial console on stdin (firmware.md §4.2): `config: {json}` / `factory: {json}` lines,
answered on stdout with `{"code":200,"msg":"done"|"no change"}` or an error code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from openevse_sim.config import ConfigError, PostResult

if TYPE_CHECKING:
    from openevse_sim.config import Config

MAX_LINE = 4096


def _reject_constant(name: str) -> object:
    raise ValueError(f"not JSON: {name}")


def answer(line: str, config: Config, on_applied: Callable[[PostResult], None]) -> str | None:
    """The reply line for one console line, or None when the line is not a console command."""
    command, sep, payload = line.partition(":")
    if not sep or command.strip() not in ("config", "factory"):
        return None
    try:
        body = json.loads(payload, parse_constant=_reject_constant)
    except ValueError:
        return json.dumps({"code": 400, "msg": "Could not parse JSON"}, separators=(",", ":"))
    try:
        result = config.post(body)
    except ConfigError as exc:
        return json.dumps({"code": exc.status, "msg": exc.msg}, separators=(",", ":"))
    on_applied(result)
    text = "done" if result.changed else "no change"
    return json.dumps({"code": 200, "msg": text}, separators=(",", ":"))


class Console:
    def __init__(self, config: Config, on_applied: Callable[[PostResult], None]) -> None:
        self.config = config
        self.on_applied = on_applied
        self._buf = b""
        self._fd = -1

    def start(self) -> None:
        try:
            fd = sys.stdin.fileno()
            os.set_blocking(fd, False)
            asyncio.get_running_loop().add_reader(fd, self._readable)
        except (OSError, ValueError, AttributeError, NotImplementedError, PermissionError):
            return  # no usable stdin (closed, a regular file, ...): no console
        self._fd = fd

    def stop(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = -1

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stop()
            return
        self._buf = (self._buf + data)[-MAX_LINE * 4 :]
        while b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            reply = answer(raw.decode("utf-8", "replace").strip(), self.config, self.on_applied)
            if reply is not None:
                print(reply, flush=True)
