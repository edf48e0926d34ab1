"""Contract of the load-sharing REST endpoints on a running stand-in (firmware.md §1.1 to §1.6)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.native.conftest import Sim, poll

JSON = "application/json"


@dataclass
class Raw:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def raw_request(sim: Sim, method: str, path: str) -> Raw:
    """The path goes out byte for byte (requests would re-encode a malformed `%zz`)."""
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
        return Raw(response.status, dict(response.getheaders()), body)
    finally:
        conn.close()


def body_msg(response: requests.Response | Raw) -> str:
    assert response.headers["Content-Type"].startswith(JSON)
    doc = response.json()
    assert set(doc) == {"msg"}, doc
    return str(doc["msg"])


@pytest.fixture
def sim(sim_factory: Callable[..., Sim]) -> Sim:
    return sim_factory("a")


# --- §1.1 routing and common behaviour -------------------------------------------------------


@pytest.mark.parametrize("path", ["/loadsharing/peers", "/loadsharing/status", "/loadsharing/discover"])
def test_options_on_loadsharing_routes_is_405_and_no_cors(sim: Sim, path: str) -> None:
    response = raw_request(sim, "OPTIONS", path)
    assert response.status_code == 405
    assert body_msg(response) == "Method not allowed"
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_config_options_is_bare_200(sim: Sim) -> None:
    response = raw_request(sim, "OPTIONS", "/config")
    assert response.status_code == 200
    assert response.content == b""


def test_loadsharing_responses_carry_json_and_no_cache(sim: Sim) -> None:
    response = sim.get("/loadsharing/peers")
    assert response.headers["Content-Type"].startswith(JSON)
    assert response.headers["Cache-Control"].startswith("no-cache")


def test_prefix_routing_serves_status_for_longer_paths(sim: Sim) -> None:
    """Mongoose prefix match, longest wins: `/loadsharing/statusXYZ` is the status handler (§1.1)."""
    response = sim.get("/loadsharing/statusXYZ")
    assert response.status_code == 200
    assert "online_count" in response.json()
    response = sim.get("/loadsharing/peersXYZ")
    assert response.status_code == 200
    assert isinstance(response.json(), list)


def test_unknown_url_in_ap_mode_is_301_to_portal(sim: Sim) -> None:
    response = sim.get("/no/such/page")
    assert response.status_code == 301
    assert response.headers["Location"] == "http://192.168.4.1"


# --- §1.2 GET /loadsharing/peers -------------------------------------------------------------


def joined_rows(sim: Sim) -> list[dict[str, Any]]:
    """Rows of this unit's group. Other instances on the shared loopback mDNS domain (other
    tests, other runs) may appear as discovered rows, which are always `joined: false`."""
    return [r for r in sim.peers() if r["joined"]]


def test_fresh_instance_lists_only_the_local_entry(sim: Sim) -> None:
    rows = sim.peers()
    assert [r for r in rows[1:] if r["joined"] or r["isLocal"]] == []  # anything else is discovered
    assert rows[:1] == [
        {
            "id": sim.long_id,
            "name": sim.hostname,
            "host": f"{sim.hostname}.local",
            "url": f"http://{sim.hostname}.local:{sim.port}",
            "ip": "192.168.4.1",
            "online": True,
            "joined": True,
            "isLocal": True,
        }
    ]


def test_rows_keep_local_first_then_insertion_order(sim: Sim) -> None:
    for host in ("b.example:1", "a.example:2", "c.example:3"):
        assert sim.post("/loadsharing/peers", {"host": host, "reciprocal": False}).status_code == 200
    rows = sim.peers()
    joined = [r["joined"] for r in rows]
    assert joined == sorted(joined, reverse=True)  # local, then added peers, then discovered ones
    rows = [r for r in rows if r["joined"]]
    assert [r["host"] for r in rows] == [f"{sim.hostname}.local", "b.example:1", "a.example:2", "c.example:3"]
    added = rows[1]
    assert added == {
        "id": "",
        "name": "",
        "host": "b.example:1",
        "url": "",
        "ip": "",
        "online": False,
        "joined": True,
        "isLocal": False,
    }


# --- §1.3 POST /loadsharing/peers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "Invalid JSON"),
        (b"{not json", 400, "Invalid JSON"),
        (json.dumps({"host": "x" * 300 + ".local"}).encode(), 400, "Invalid JSON"),
        (b"{}", 400, "Missing required 'host' parameter"),
        (b'{"hostname":"a.local"}', 400, "Missing required 'host' parameter"),
        (b'{"host":"   "}', 400, "Host cannot be empty"),
        (b'{"host":""}', 400, "Host cannot be empty"),
        (b'{"host":"nodotnocolon"}', 400, "Invalid host format - must contain domain or IP"),
    ],
)
def test_add_rejections_in_order(sim: Sim, data: bytes, status: int, message: str) -> None:
    response = sim.post("/loadsharing/peers", data=data)
    assert response.status_code == status
    assert body_msg(response) == message
    assert len(joined_rows(sim)) == 1


def test_add_local_device_is_rejected_by_name_mdns_name_and_id(sim: Sim) -> None:
    for host in (sim.hostname, f"{sim.hostname}.local", f"{sim.hostname.upper()}.LOCAL", sim.long_id):
        response = sim.post("/loadsharing/peers", {"host": host})
        assert response.status_code == 400, host
        assert body_msg(response) == "Cannot add local device as peer"


def test_add_then_duplicate_is_idempotent_200(sim: Sim) -> None:
    first = sim.post("/loadsharing/peers", {"host": "  peer.example:8001 ", "reciprocal": False})
    assert first.status_code == 200
    assert body_msg(first) == "done"
    stored = sim.cwd / "epoxyfsdata" / "loadsharing_peers.json"
    before = stored.stat().st_mtime_ns
    second = sim.post("/loadsharing/peers", {"host": "peer.example:8001", "reciprocal": False})
    assert second.status_code == 200
    assert body_msg(second) == "already in group"
    hosts = [r["host"] for r in sim.peers()]
    assert hosts.count("peer.example:8001") == 1
    assert stored.stat().st_mtime_ns == before  # a duplicate is not persisted again
    # Host matching is case-sensitive (§1.3 row 7): a different case is a new entry.
    third = sim.post("/loadsharing/peers", {"host": "PEER.example:8001", "reciprocal": False})
    assert body_msg(third) == "done"


def test_add_persists_to_fs_file_and_bumps_version(sim: Sim) -> None:
    before = sim.get("/status").json()["loadsharing_peers_version"]
    assert sim.post("/loadsharing/peers", {"host": "10.0.0.9:80", "reciprocal": False}).status_code == 200
    stored = json.loads((sim.cwd / "epoxyfsdata" / "loadsharing_peers.json").read_text())
    assert stored == {"peers": [{"id": "", "host": "10.0.0.9:80"}]}
    assert sim.get("/status").json()["loadsharing_peers_version"] > before


@pytest.mark.parametrize("method", ["PUT", "PATCH", "HEAD", "OPTIONS"])
def test_peers_other_methods_are_405(sim: Sim, method: str) -> None:
    response = raw_request(sim, method, "/loadsharing/peers")
    assert response.status_code == 405
    if method != "HEAD":
        assert body_msg(response) == "Method not allowed"


def test_member_cannot_add(sim: Sim) -> None:
    member = {
        "loadsharing_enabled": True,
        "loadsharing_role": "member",
        "loadsharing_controller_host": "c.local",
    }
    assert sim.post("/config", member).status_code == 200
    response = sim.post("/loadsharing/peers", {"host": "x.example"})
    assert response.status_code == 403
    assert body_msg(response) == "Load sharing configuration is read-only on members"
    # Order: JSON and the host key are checked before the member lockout (§1.3 rows 1-3).
    assert body_msg(sim.post("/loadsharing/peers", data=b"nope")) == "Invalid JSON"
    assert body_msg(sim.post("/loadsharing/peers", {})) == "Missing required 'host' parameter"
    assert sim.delete("/loadsharing/peers/x.example").status_code == 403


def test_reciprocal_add_reaches_the_other_unit(sim_factory: Callable[..., Sim]) -> None:
    a, b = sim_factory("a"), sim_factory("b")
    response = a.post("/loadsharing/peers", {"host": f"localhost:{b.port}"})
    assert body_msg(response) == "done"

    def reverse_entry() -> dict[str, object] | None:
        return next((r for r in b.peers() if r["host"].startswith(f"{a.hostname}.local")), None)

    row = poll(reverse_entry, 10, "reciprocal entry on B")
    assert row["joined"] is True
    # B was told A's mDNS name without a port (§1.3); discovery may later add the port (§2.4).
    assert re.fullmatch(rf"{re.escape(a.hostname)}\.local(:{a.port})?", str(row["host"]))
    # A second add is a duplicate: 200, and nothing new appears on B.
    assert body_msg(a.post("/loadsharing/peers", {"host": f"localhost:{b.port}"})) == "already in group"
    assert sum(1 for r in b.peers() if r["host"].startswith(f"{a.hostname}.local")) == 1


def test_reciprocal_false_sends_nothing(sim_factory: Callable[..., Sim]) -> None:
    a, b = sim_factory("a"), sim_factory("b")
    assert (
        a.post("/loadsharing/peers", {"host": f"localhost:{b.port}", "reciprocal": False}).status_code == 200
    )
    # A polls B (GET /status, /config, /ws), so B's log proves traffic arrived, yet B gains no joined row.
    poll(lambda: any(r.get("status") for r in a.ls_status()["peers"]), 15, "A polled B")
    assert [r for r in b.peers() if r["joined"] and not r["isLocal"]] == []


# --- §1.4 DELETE /loadsharing/peers/{host} ---------------------------------------------------


def test_delete_percent_encoded_host(sim: Sim) -> None:
    assert sim.post("/loadsharing/peers", {"host": "localhost:8001", "reciprocal": False}).status_code == 200
    response = sim.delete("/loadsharing/peers/localhost%3A8001?reciprocal=false")
    assert response.status_code == 200
    assert body_msg(response) == "done"
    row = next(r for r in sim.peers() if r["host"] == "localhost:8001")
    assert row["joined"] is False  # the row stays, un-joined (§1.4)
    stored = json.loads((sim.cwd / "epoxyfsdata" / "loadsharing_peers.json").read_text())
    assert stored == {"peers": []}
    again = sim.delete("/loadsharing/peers/localhost%3A8001")
    assert again.status_code == 404
    assert body_msg(again) == "Peer not found"


def test_plus_is_not_decoded(sim: Sim) -> None:
    assert sim.post("/loadsharing/peers", {"host": "a+b.example", "reciprocal": False}).status_code == 200
    assert sim.delete("/loadsharing/peers/a%20b.example").status_code == 404
    assert sim.delete("/loadsharing/peers/a+b.example").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("DELETE", "/loadsharing/peers/", 400, "Invalid path"),
        ("GET", "/loadsharing/peers/", 400, "Invalid path"),
        ("DELETE", "/loadsharing/peers/?x=1", 400, "Invalid path"),
        ("DELETE", "/loadsharing/peers/bad%zzhost", 400, "Invalid host"),
        ("DELETE", "/loadsharing/peers/bad%4", 400, "Invalid host"),
        ("GET", "/loadsharing/peers/bad%zz", 400, "Invalid host"),
        ("GET", "/loadsharing/peers/x.example", 405, "Method not allowed"),
        ("POST", "/loadsharing/peers/x.example", 405, "Method not allowed"),
        ("DELETE", "/loadsharing/peers/nonexistent", 404, "Peer not found"),
        ("DELETE", "/loadsharing/peers", 405, "Use DELETE /loadsharing/peers/{host}"),
    ],
)
def test_delete_table(sim: Sim, method: str, path: str, status: int, message: str) -> None:
    response = raw_request(sim, method, path)
    assert response.status_code == status
    assert body_msg(response) == message


def test_delete_local_device_is_400(sim: Sim) -> None:
    for host in (f"{sim.hostname}.local", sim.hostname, sim.long_id):
        response = sim.delete(f"/loadsharing/peers/{host}")
        assert response.status_code == 400
        assert body_msg(response) == "Cannot remove local device from group"


def capture_request(listener: socket.socket, request_line: bytes) -> tuple[bytes, bytes]:
    """Accept requests on `listener` (answering 200 `{}`) until one starts with `request_line`.

    Others (e.g. the poller's `GET /status` to a freshly joined host) are answered and skipped."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        head, body = _one_request(listener)
        if head.startswith(request_line):
            return head, body
    raise AssertionError(f"no {request_line!r} within 10 s")


def _one_request(listener: socket.socket) -> tuple[bytes, bytes]:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            chunk = conn.recv(4096)
            if not chunk:
                break
            body += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    return head, body


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback socket standing in for a peer, to see exactly what the stand-in sends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        sock.settimeout(10)
        yield sock


def test_delete_sends_config_reset_even_for_unknown_host(sim: Sim, listener: socket.socket) -> None:
    """The reset POST arrives although the answer is 404 (§1.4)."""
    port = listener.getsockname()[1]
    response = sim.delete(f"/loadsharing/peers/127.0.0.1%3A{port}")
    assert response.status_code == 404
    _, body = capture_request(listener, b"POST /config HTTP/1.1")
    assert json.loads(body) == {
        "loadsharing_enabled": False,
        "loadsharing_role": "",
        "loadsharing_controller_host": "",
    }


def test_reciprocal_add_request_body(sim: Sim, listener: socket.socket) -> None:
    """§1.3: `POST http://<host as given>/loadsharing/peers`, our mDNS name without a port."""
    port = listener.getsockname()[1]
    assert body_msg(sim.post("/loadsharing/peers", {"host": f"127.0.0.1:{port}"})) == "done"
    _, body = capture_request(listener, b"POST /loadsharing/peers HTTP/1.1")
    assert json.loads(body) == {"host": f"{sim.hostname}.local", "reciprocal": False}


def test_delete_discovered_only_entry_is_404(sim_factory: Callable[..., Sim]) -> None:
    a, b = sim_factory("a"), sim_factory("b")
    assert a.post("/loadsharing/discover").status_code == 200
    row = poll(lambda: next((r for r in a.peers() if r["id"] == b.long_id), None), 10, "B discovered by A")
    assert row["joined"] is False
    response = a.delete(f"/loadsharing/peers/{row['host']}")
    assert response.status_code == 404
    assert body_msg(response) == "Peer not found"


# --- §1.5 POST /loadsharing/discover ---------------------------------------------------------


def test_discover_post_and_other_methods(sim: Sim) -> None:
    response = sim.post("/loadsharing/discover")
    assert response.status_code == 200
    assert body_msg(response) == "done"
    for method in ("GET", "PUT", "DELETE"):
        other = raw_request(sim, method, "/loadsharing/discover")
        assert other.status_code == 405
        assert body_msg(other) == "Method not allowed"


# --- §1.6 GET /loadsharing/status ------------------------------------------------------------


def test_status_document_shape(sim: Sim) -> None:
    assert sim.post("/loadsharing/peers", {"host": "10.1.2.3:9", "reciprocal": False}).status_code == 200
    assert sim.post("/config", {"loadsharing_group_id": "g1", "loadsharing_enabled": True}).status_code == 200
    doc = sim.ls_status()
    assert list(doc) == [
        "enabled",
        "group_id",
        "computed_at",
        "failsafe_active",
        "online_count",
        "offline_count",
        "peers",
        "allocations",
    ]
    assert doc["enabled"] is True
    assert doc["group_id"] == "g1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["computed_at"])
    assert doc["failsafe_active"] is False
    assert doc["online_count"] == 1  # the local device counts
    assert doc["offline_count"] == 1  # the unreachable joined peer
    assert doc["allocations"] == []
    local, peer = [r for r in doc["peers"] if r["joined"]]
    assert "isLocal" not in local
    assert local["host"] == f"{sim.hostname}.local"
    assert "status" not in local
    assert peer == {
        "id": "",
        "name": "",
        "host": "10.1.2.3:9",
        "url": "",
        "ip": "",
        "online": False,
        "joined": True,
        "version": "",
        "last_seen": 0,
    }
    for method in ("POST", "DELETE"):
        response = raw_request(sim, method, "/loadsharing/status")
        assert response.status_code == 405
        assert body_msg(response) == "Method not allowed"


def test_adding_a_discovered_entry_flips_it_to_joined(sim_factory: Callable[..., Sim]) -> None:
    """§1.3 side effect: an existing (discovered) row with that host becomes joined, no new row."""
    a, b = sim_factory("a"), sim_factory("b")
    a.post("/loadsharing/discover")
    row = poll(lambda: next((r for r in a.peers() if r["id"] == b.long_id), None), 10, "B discovered by A")
    assert row["joined"] is False
    count = len(a.peers())
    response = a.post("/loadsharing/peers", {"host": row["host"], "reciprocal": False})
    assert body_msg(response) == "done"
    rows = [r for r in a.peers() if r["id"] == b.long_id]
    assert len(rows) == 1
    assert rows[0]["joined"] is True
    assert len(a.peers()) == count
    stored = json.loads((a.cwd / "epoxyfsdata" / "loadsharing_peers.json").read_text())
    assert stored == {"peers": [{"id": b.long_id, "host": rows[0]["host"]}]}
