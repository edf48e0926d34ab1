"""``python -m emulator`` / ``openevse-emulator``: the process contract of docs/architecture.md.

Both listeners are bound before the single JSON ready line is printed on stdout; everything
else goes to stderr. SIGTERM and SIGINT stop it with exit status 0 well within a second.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from emulator import config as config_mod
from emulator.control_api import ControlApi, ControlServer
from emulator.model import Controller
from emulator.rapi_server import RapiServer
from emulator.trace import Trace

log = logging.getLogger("emulator")


def _ticker(controller: Controller, stop: threading.Event, tick_s: float) -> None:
    while not stop.wait(tick_s):
        try:
            controller.tick()
        except Exception:  # keep simulating; the log says what broke
            log.exception("tick failed")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_mod.parse(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, cfg.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    controller = Controller(
        firmware_version=cfg.firmware_version,
        protocol_version=cfg.protocol_version,
        mcu_id=cfg.mcu_id,
    )
    trace = Trace(cfg.trace)
    rapi = RapiServer(
        controller,
        trace,
        mode=cfg.serial_mode,
        host=cfg.rapi_host,
        port=cfg.rapi_port,
        pty_link=cfg.pty_path,
    )
    web: ControlServer | None = None
    try:
        rapi.start()
        web = ControlServer(ControlApi(controller, lambda: rapi.client_connected), cfg.web_host, cfg.web_port)
        web.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        rapi.stop()
        trace.close()
        return 1
    ticker = threading.Thread(
        target=_ticker, args=(controller, stop, cfg.tick_ms / 1000.0), name="tick", daemon=True
    )
    ticker.start()

    ready: dict[str, object] = {
        "event": "ready",
        "web_port": web.port,
        "rapi_port": rapi.port,
        "pid": os.getpid(),
    }
    if rapi.pty_path is not None:
        ready["pty_path"] = str(cfg.pty_path) if cfg.pty_path else rapi.pty_path
        ready["pty_device"] = rapi.pty_path
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    log.info(
        "ready: RAPI %s, control API http://%s:%d, $GI %s, firmware %s protocol %s",
        f"pty {rapi.pty_path}" if rapi.pty_path else f"tcp {cfg.rapi_host}:{rapi.port}",
        cfg.web_host,
        web.port,
        controller.mcu_id,
        cfg.firmware_version,
        cfg.protocol_version,
    )

    while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    log.info("stopping")
    web.stop()
    rapi.stop()
    trace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
