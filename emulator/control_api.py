"""The control API (evse.md §6): the upstream emulator's paths and JSON, on http.server.

Every answer is JSON. Bad input is 400 ``{"error": ...}``, an unknown path 404, a known path
with the wrong method 405. Each request runs on its own thread (ThreadingHTTPServer); a bug
in a handler is logged and answered as a JSON 500 while the server keeps running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulator.model import FAULTS, Controller

log = logging.getLogger("emulator.api")

MAX_BODY = 64 * 1024
Json = dict[str, Any]


class BadRequest(Exception):
    """Becomes 400 {"error": message}."""


def _number(body: Json, key: str, low: float, high: float, *, integer: bool = False) -> float:
    if key not in body:
        raise BadRequest(f"missing key {key!r}")
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key!r} must be a number, not {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"{key!r} must be finite")
    if integer and value != int(value):
        raise BadRequest(f"{key!r} must be a whole number, not {value}")
    if not low <= value <= high:
        raise BadRequest(f"{key!r} must be {low:g}..{high:g}, not {value}")
    return float(value)


def _choice(body: Json, key: str, choices: tuple[str, ...]) -> str:
    if key not in body:
        raise BadRequest(f"missing key {key!r}")
    value = body[key]
    if not isinstance(value, str) or value not in choices:
        raise BadRequest(f"{key!r} must be one of {', '.join(choices)}, not {value!r}")
    return value


OK: Json = {"success": True}


class ControlApi:
    """Routes: path -> method -> handler(body) -> (status, json)."""

    def __init__(self, controller: Controller, link_state: Callable[[], bool] = lambda: False) -> None:
        c = controller
        self.controller = controller
        self.link_state = link_state

        def post(action: Callable[[], None]) -> Callable[[Json], Json]:
            def handler(body: Json) -> Json:
                action()
                return OK

            return handler

        def enable(body: Json) -> Json:
            if c.faults():
                raise BadRequest("cannot enable while a fault is active; clear it first")
            c.set_mode("active")
            return OK

        def current(body: Json) -> Json:
            c.set_capacity(int(_number(body, "amps", 6, 80, integer=True)), "saved")
            return OK

        def service_level(body: Json) -> Json:
            c.set_service_level(_choice(body, "level", ("L1", "L2", "Auto")))  # type: ignore[arg-type]
            return OK

        def soc(body: Json) -> Json:
            c.ev_set_soc(_number(body, "soc", 0, 100))
            return OK

        def max_rate(body: Json) -> Json:
            c.ev_set_max_amps(_number(body, "amps", 0, 80))
            return OK

        def trigger(body: Json) -> Json:
            c.trigger_fault(_choice(body, "error", tuple(FAULTS)))
            return OK

        self.routes: dict[str, dict[str, Callable[[Json], Json]]] = {
            "/api/status": {"GET": lambda b: {"evse": self._evse(), "ev": c.ev_json()}},
            "/api/evse/status": {"GET": lambda b: self._evse()},
            "/api/evse/version": {
                "GET": lambda b: {"firmware": c.firmware_version, "protocol": c.protocol_version}
            },
            "/api/evse/enable": {"POST": enable},
            "/api/evse/disable": {"POST": post(lambda: c.set_mode("sleep"))},
            "/api/evse/reset": {"POST": post(c.reset)},
            "/api/evse/current": {"POST": current},
            "/api/evse/service_level": {"POST": service_level},
            "/api/ev/status": {"GET": lambda b: c.ev_json()},
            "/api/ev/connect": {"POST": post(lambda: c.ev_connect(True))},
            "/api/ev/disconnect": {"POST": post(lambda: c.ev_connect(False))},
            "/api/ev/request_charge": {"POST": post(lambda: c.ev_request(True))},
            "/api/ev/stop_charge": {"POST": post(lambda: c.ev_request(False))},
            "/api/ev/soc": {"POST": soc},
            "/api/ev/max_rate": {"POST": max_rate},
            "/api/errors/trigger": {"POST": trigger},
            "/api/errors/clear": {"POST": post(c.clear_faults)},
            "/api/errors/status": {"GET": lambda b: self._errors()},
        }
        # Bodies are read only where a handler uses one; elsewhere any body is ignored.
        self.takes_body = {
            "/api/evse/current",
            "/api/evse/service_level",
            "/api/ev/soc",
            "/api/ev/max_rate",
            "/api/errors/trigger",
        }

    def _evse(self) -> Json:
        status = self.controller.evse_json()
        status["rapi_client_connected"] = self.link_state()
        return status

    def _errors(self) -> Json:
        evse = self.controller.evse_json()
        return {
            "error_flags": evse["error_flags"],
            "active": self.controller.faults(),
            "error_counts": {
                "gfci": evse["gfci_count"],
                "no_ground": evse["no_ground_count"],
                "stuck_relay": evse["stuck_relay_count"],
            },
        }

    def dispatch(self, method: str, path: str, body: bytes) -> tuple[int, Json, dict[str, str]]:
        """(status, json, extra headers); never raises."""
        path = path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        methods = self.routes.get(path)
        if methods is None:
            return 404, {"error": f"no such path: {path}"}, {}
        handler = methods.get(method)
        if handler is None:
            allow = ", ".join(sorted(methods))
            return 405, {"error": f"{method} not allowed on {path}; use {allow}"}, {"Allow": allow}
        try:
            parsed: Json = {}
            if path in self.takes_body:
                parsed = _parse_body(body)
            return 200, handler(parsed), {}
        except BadRequest as exc:
            return 400, {"error": str(exc)}, {}
        except Exception as exc:  # a bug must not take the server down
            log.exception("control API: %s %s failed", method, path)
            return 500, {"error": f"internal error: {exc}"}, {}


def _parse_body(body: bytes) -> Json:
    if not body.strip():
        raise BadRequest("a JSON object body is required")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"body must be a JSON object, not {type(value).__name__}")
    return value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _handle(self) -> None:
        length_text = self.headers.get("Content-Length", "0")
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            self._reply(400, {"error": f"bad Content-Length: {length_text!r}"}, {}, close=True)
            return
        if length > MAX_BODY:
            self._reply(400, {"error": f"body too large: {length} > {MAX_BODY} bytes"}, {}, close=True)
            return
        body = self.rfile.read(length) if length else b""
        status, payload, headers = self.server.api.dispatch(self.command, self.path, body)
        self._reply(status, payload, headers)

    def _reply(self, status: int, payload: Json, headers: dict[str, str], close: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line, unknown method) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # garbage request line: still answer with a status line
            self.request_version = "HTTP/1.0"
        with contextlib.suppress(OSError):
            self._reply(code, {"error": message or HTTPStatus(code).phrase}, {}, close=True)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: ControlApi) -> None:
        self.api = api
        super().__init__(address, _Handler)


class ControlServer:
    """The control API on its own thread."""

    def __init__(self, api: ControlApi, host: str, port: int) -> None:
        self._server = _Server((host, port), api)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="control-api", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=1.0)
