"""Malformed input of every kind against one running stand-in: no 5xx, no crash, no hang.

Hosts that could make the stand-in reach out (reciprocal add, DELETE's config reset) are drawn
from loopback-only values, so the sweep never causes traffic beyond 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.native.conftest import Sim, free_port, poll

REQUEST_TIMEOUT = 10.0
ROUTES = [
    "/",
    "/status",
    "/config",
    "/ws",
    "/loadsharing/peers",
    "/loadsharing/peers/",
    "/loadsharing/status",
    "/loadsharing/discover",
    "/loadsharing",
    "/override",
    "/claims",
]
SAFE_HOSTS = ["localhost:1", "127.0.0.1:1", "127.0.0.1", "localhost", "127.0.0.2:9", "[::1]:1"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO", "get"]
PATH_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    tmp = tmp_path_factory.mktemp("fuzz")
    sim = Sim(
        cwd=tmp / "sim",
        port=free_port(),
        hostname=f"fuzz-{time.time_ns() % 10**8}",
        chip_id=0xF0221,
        rapi=str(tmp / "none"),
    )
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
    return st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
        max_leaves=12,
    )


CONFIG_KEYS = [
    "loadsharing_enabled",
    "loadsharing_role",
    "loadsharing_group_max_current",
    "loadsharing_safety_factor",
    "loadsharing_heartbeat_timeout",
    "loadsharing_failsafe_mode",
    "loadsharing_failsafe_safe_current",
    "loadsharing_controller_host",
    "loadsharing_priority",
    "www_username",
    "hostname",
    "vehicle_data_src",
    "no_such_key",
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["raw", "json", "peer", "config", "big", "empty"]))
    if kind == "raw":
        return draw(st.binary(max_size=400))
    if kind == "json":
        return json.dumps(draw(json_values())).encode()
    if kind == "peer":
        host = draw(st.sampled_from(SAFE_HOSTS) | json_values() | st.text(alphabet="abc ", max_size=5))
        doc: dict[str, Any] = {"host": host}
        if draw(st.booleans()):
            doc["reciprocal"] = draw(json_values())
        return json.dumps(doc).encode()
    if kind == "config":
        doc = {k: draw(json_values()) for k in draw(st.lists(st.sampled_from(CONFIG_KEYS), max_size=4))}
        # Never lock ourselves out: auth only bites in STA mode, which fuzzing never enables.
        doc.pop("hostname", None)
        return json.dumps(doc).encode()
    if kind == "big":
        return b"{" + b'"k":' * draw(st.integers(100, 20000)) + b"1}"
    return b""


@st.composite
def paths(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["route", "route+junk", "junk", "peerhost", "percent"]))
    if kind == "route":
        path = draw(st.sampled_from(ROUTES))
    elif kind == "route+junk":
        path = draw(st.sampled_from(ROUTES)) + draw(st.text(PATH_CHARS, max_size=30))
    elif kind == "junk":
        path = "/" + draw(st.text(PATH_CHARS, max_size=60))
    elif kind == "peerhost":
        path = "/loadsharing/peers/" + draw(st.sampled_from(SAFE_HOSTS)).replace(
            ":", draw(st.sampled_from([":", "%3A", "%3a"]))
        )
    else:
        path = "/loadsharing/peers/" + draw(
            st.sampled_from(["%", "%4", "%zz", "%%", "%00", "%ff%fe", "+", "%2F"])
        )
    if draw(st.booleans()):
        path += "?" + draw(st.text(PATH_CHARS, max_size=20))
    return path


HEADER_NAME = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789"), min_size=1, max_size=20)
HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


def outbound_risk(method: str, path: str) -> bool:
    """A DELETE of an arbitrary host would make the stand-in POST to it; keep those loopback-only."""
    if method != "DELETE" or not path.startswith("/loadsharing/peers/"):
        return False
    host = path[len("/loadsharing/peers/") :].split("?", 1)[0].replace("%3A", ":").replace("%3a", ":")
    return host not in SAFE_HOSTS and "%" not in host and host != ""


def send(sim: Sim, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=REQUEST_TIMEOUT)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "127.0.0.1")
        for name, value in headers.items():
            if name.lower() not in (
                "host",
                "content-length",
                "transfer-encoding",
                "connection",
                "upgrade",
                "expect",
            ):
                conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Type") or ""
    finally:
        conn.close()


def documented_500(method: str, path: str, content: bytes) -> bool:
    """The firmware's own 500s (§7.3): no override to release, or every claim slot taken."""
    if path.split("?", 1)[0] != "/override" or method not in ("POST", "DELETE", "PATCH"):
        return False
    return content in (b'{"msg":"Failed to release manual override"}', b'{"msg":"Failed to claim"}')


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    method=st.sampled_from(METHODS),
    path=paths(),
    headers=st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=6),
    body=bodies(),
)
def test_generated_requests_never_5xx(
    target: Sim, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    if outbound_risk(method, path):
        method = "GET"
    begin = time.monotonic()
    status, content, ctype = send(target, method, path, headers, body)
    assert time.monotonic() - begin < REQUEST_TIMEOUT
    assert status < 500 or documented_500(method, path, content), (method, path, status, content[:200])
    if status >= 400 and method != "HEAD":
        # Every rejection is the firmware's JSON envelope.
        assert ctype.startswith("application/json"), (method, path, status, content[:200])
        doc = json.loads(content)
        assert isinstance(doc, dict)
        assert isinstance(doc.get("msg"), str)
    assert target.alive()


GARBAGE = [
    b"\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /config HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{",  # short body, then close
    b"POST /config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"\x00\x01\x02\xff\xfe" * 100,
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n",
]


@pytest.mark.parametrize("payload", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_on_the_wire(target: Sim, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", target.port), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if data:
        status = int(data.split(b" ", 2)[1])
        assert status < 500, data[:300]
    assert target.alive()
    assert poll(lambda: target.get("/status").status_code == 200, 5, "still answering")


def test_websocket_garbage_frames(target: Sim) -> None:
    import websocket

    sock = websocket.create_connection(f"ws://127.0.0.1:{target.port}/ws", timeout=REQUEST_TIMEOUT)
    try:
        assert "state" in json.loads(sock.recv())
        for frame in [
            "",
            "{",
            "[]",
            "null",
            '{"ping":"x"}',
            '{"loadsharing":5}',
            '{"loadsharing":{"target_current":"a"}}',
            "x" * 8000,
        ]:
            sock.send(frame)
        sock.send_binary(b"\x00\xff")
        sock.send(json.dumps({"ping": 7}))
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while time.monotonic() < deadline:
            if json.loads(sock.recv()) == {"pong": 1}:
                break
        else:
            pytest.fail("no pong")
    finally:
        sock.close()
    assert target.alive()


def test_websocket_oversized_frame_closes_only_that_connection(target: Sim) -> None:
    import websocket

    sock = websocket.create_connection(f"ws://127.0.0.1:{target.port}/ws", timeout=REQUEST_TIMEOUT)
    try:
        sock.recv()
        with contextlib.suppress(OSError, websocket.WebSocketException):
            sock.send("x" * 100_000)  # over the 16 KiB limit: the server closes this socket

        def drain_until_closed() -> None:
            while sock.recv() != "":  # "" = close frame received
                pass
            raise websocket.WebSocketConnectionClosedException("closed")

        with pytest.raises((OSError, websocket.WebSocketException)):
            drain_until_closed()
    finally:
        sock.close()
    other = websocket.create_connection(f"ws://127.0.0.1:{target.port}/ws", timeout=REQUEST_TIMEOUT)
    try:
        assert "state" in json.loads(other.recv())
    finally:
        other.close()
    assert target.alive()


def test_target_log_has_no_tracebacks(target: Sim) -> None:
    assert "Traceback" not in target.stderr.read_text()
    assert "Error handling request" not in target.stderr.read_text()
    assert isinstance(target.stdout, Path)
