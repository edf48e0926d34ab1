"""Peer management over HTTP: firmware.md §1.1-§1.5 (list, add, delete, discover trigger).

Peers are added as ``localhost:<port>`` (or an unreachable loopback address where only the
host string matters), so nothing here depends on mDNS; see test_mdns.py for discovery.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.support import (
    EVSE_DEADLINE,
    PEER_STATUS_DEADLINE,
    UNREACHABLE_HOST,
    Group,
    Unit,
    add_peer,
    assert_fields,
    delete_peer,
    emulator_post,
    eventually,
    expect,
    expect_msg,
    find_peer,
    get_peers,
    get_status,
    joined_rows,
    loopback_host,
    matching,
    peer_path,
    raw_request,
    row_of,
    self_host,
)

pytestmark = pytest.mark.timeout(120)  # backstop only; every wait has its own deadline

PairFactory = Callable[[], Unit]
GroupFactory = Callable[[int], Group]

# firmware.md §1.2
PEER_ROW_TYPES: dict[str, Any] = {
    "id": str,
    "name": str,
    "host": str,
    "url": str,
    "ip": str,
    "online": bool,
    "joined": bool,
    "isLocal": bool,
}


def joined_remote(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("joined") is True and r.get("isLocal") is not True]


@pytest.mark.fresh_rig  # "initial": a brand-new unit, not one reset after an earlier test
def test_initial_peer_list(instance_pair: PairFactory) -> None:
    """§1.2: a bare array, the local entry first with its identity; nothing else joined."""
    unit = instance_pair()
    rows = get_peers(unit)
    assert rows, "a fresh unit lists itself: never an empty array (§1.2)"
    for i, row in enumerate(rows):
        assert_fields(row, PEER_ROW_TYPES, f"peers[{i}]")
    local = rows[0]
    assert local["isLocal"] is True
    assert local["host"] == self_host(unit)
    assert local["id"] == unit.long_id
    assert local["name"] == unit.hostname
    assert local["url"] == f"http://{unit.hostname}.local:{unit.firmware_port}"
    assert local["ip"] != ""
    assert local["joined"] is True
    assert local["online"] is True
    # Units of other rigs on the same network may follow as discovered entries, never joined.
    assert [r for r in rows[1:] if r["isLocal"]] == []
    assert joined_remote(rows) == []


def test_discover_trigger(instance_pair: PairFactory) -> None:
    """§1.5: POST /loadsharing/discover answers at once; the sweep runs asynchronously."""
    unit = instance_pair()
    expect_msg(unit.api.post("/loadsharing/discover"), 200, "done")
    assert get_peers(unit)[0]["isLocal"] is True


def test_manual_add(multi_instance_group: GroupFactory) -> None:
    """§1.3 rule 8: 200 done, a joined entry, peers_version bumped; §3.2: the poller then
    learns the peer's identity from its /config and marks it online."""
    group = multi_instance_group(2)
    u0, u1 = group[0], group[1]
    host = loopback_host(u1)
    version_before = get_status(u0)["loadsharing_peers_version"]

    expect_msg(add_peer(u0, host, reciprocal=False), 200, "done")

    rows = get_peers(u0)
    row = row_of(rows, u1, host=host)
    assert row["joined"] is True
    assert row["isLocal"] is False
    assert len(joined_rows(rows, u1, host=host)) == 1
    assert get_status(u0)["loadsharing_peers_version"] > version_before

    def identity_learned() -> None:
        r = row_of(get_peers(u0), u1, host=host)
        assert r["id"] == u1.long_id
        assert r["name"] == u1.hostname
        assert r["joined"] is True
        assert r["online"] is True

    eventually(identity_learned, timeout=PEER_STATUS_DEADLINE, what="manual peer identified and online")


def test_duplicate_add_is_idempotent(instance_pair: PairFactory) -> None:
    """§1.3 rule 7: a second add of a joined host is 200 "already in group", one entry."""
    unit = instance_pair()
    expect_msg(add_peer(unit, UNREACHABLE_HOST, reciprocal=False), 200, "done")
    expect_msg(add_peer(unit, UNREACHABLE_HOST), 200, "already in group")
    expect_msg(add_peer(unit, UNREACHABLE_HOST, reciprocal=False), 200, "already in group")
    rows = [r for r in get_peers(unit) if r["host"] == UNREACHABLE_HOST]
    assert len(rows) == 1, rows
    assert rows[0]["joined"] is True


def test_reciprocal_add_visible_on_other_unit(multi_instance_group: GroupFactory) -> None:
    """§1.3/§3.5: unit0's add tells unit1 ``{"host": "<unit0>.local", "reciprocal": false}``;
    unit1 lists unit0 joined (that entry may stay offline, §1.3), and nothing loops back."""
    group = multi_instance_group(2)
    u0, u1 = group[0], group[1]
    expect_msg(add_peer(u0, loopback_host(u1)), 200, "done")

    def reverse_entry() -> None:
        rows1 = get_peers(u1)
        back = joined_rows(rows1, u0, host=self_host(u0))
        assert len(back) == 1, f"unit1 should list {self_host(u0)} joined once: {rows1!r}"
        assert back[0]["isLocal"] is False
        assert len(joined_remote(rows1)) == 1, rows1

    eventually(reverse_entry, timeout=PEER_STATUS_DEADLINE, what="reciprocal entry on unit1")
    rows0 = get_peers(u0)
    assert len(joined_rows(rows0, u1, host=loopback_host(u1))) == 1, rows0
    assert len(joined_remote(rows0)) == 1, f"the reciprocal add must not loop back: {rows0!r}"


def test_delete_with_percent_encoded_host(instance_pair: PairFactory) -> None:
    """§1.4: ``127.0.0.1%3A1`` is decoded to ``127.0.0.1:1``; 200 done; the entry is no
    longer joined; deleting it again is 404 and re-adding it is a fresh add."""
    unit = instance_pair()
    expect_msg(add_peer(unit, UNREACHABLE_HOST, reciprocal=False), 200, "done")

    resp = delete_peer(unit, UNREACHABLE_HOST)
    assert "%3A" in (resp.request.path_url or ""), resp.request.path_url
    expect_msg(resp, 200, "done")
    rows = get_peers(unit)
    assert [r for r in rows if r["host"] == UNREACHABLE_HOST and r["joined"]] == [], rows

    expect_msg(delete_peer(unit, UNREACHABLE_HOST), 404, "Peer not found")
    expect_msg(add_peer(unit, UNREACHABLE_HOST, reciprocal=False), 200, "done")
    assert [r["joined"] for r in get_peers(unit) if r["host"] == UNREACHABLE_HOST] == [True]


def test_delete_unknown_host(instance_pair: PairFactory) -> None:
    """§1.4: no entry with that host → 404 Peer not found; the list is unchanged."""
    unit = instance_pair()
    before = joined_remote(get_peers(unit))
    expect_msg(delete_peer(unit, UNREACHABLE_HOST), 404, "Peer not found")
    assert joined_remote(get_peers(unit)) == before


def test_delete_self(instance_pair: PairFactory) -> None:
    """§1.4: the local device cannot be removed (400); it stays listed and joined."""
    unit = instance_pair()
    expect_msg(delete_peer(unit, self_host(unit)), 400, "Cannot remove local device from group")
    local = get_peers(unit)[0]
    assert local["isLocal"] is True
    assert local["joined"] is True


def _self_cases(unit: Unit) -> list[tuple[str, bytes, int, str]]:
    def body(obj: object) -> bytes:
        return json.dumps(obj).encode()

    bad_self = "Cannot add local device as peer"
    return [
        ("invalid JSON", b'{"host": "a.example"', 400, "Invalid JSON"),
        ("empty body", b"", 400, "Invalid JSON"),
        ("missing host", body({"reciprocal": False}), 400, "Missing required 'host' parameter"),
        ("empty host", body({"host": ""}), 400, "Host cannot be empty"),
        ("blank host", body({"host": "   "}), 400, "Host cannot be empty"),
        ("own hostname", body({"host": unit.hostname}), 400, bad_self),
        ("own hostname.local", body({"host": self_host(unit)}), 400, bad_self),
        ("own HOSTNAME.LOCAL", body({"host": self_host(unit).upper()}), 400, bad_self),
        ("own long id", body({"host": unit.long_id}), 400, bad_self),
        (
            "no dot or colon",
            body({"host": "justaname"}),
            400,
            "Invalid host format - must contain domain or IP",
        ),
    ]


def test_add_input_errors(instance_pair: PairFactory) -> None:
    """§1.3 rules 1, 2, 4, 5, 6, each with its exact status and message; nothing is added."""
    unit = instance_pair()
    failures = []
    for name, payload, status, msg in _self_cases(unit):
        resp = unit.api.request(
            "POST", "/loadsharing/peers", data=payload, headers={"Content-Type": "application/json"}
        )
        try:
            expect_msg(resp, status, msg)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert failures == [], "\n".join(failures)
    assert joined_remote(get_peers(unit)) == []


def test_methods_not_allowed(instance_pair: PairFactory) -> None:
    """§1.3-§1.5: the 405s, including the hint for DELETE without a host."""
    unit = instance_pair()
    failures = []
    cases: list[tuple[str, str, str | None]] = [
        ("PUT", "/loadsharing/peers", "Method not allowed"),
        ("PATCH", "/loadsharing/peers", "Method not allowed"),
        ("DELETE", "/loadsharing/peers", "Use DELETE /loadsharing/peers/{host}"),
        ("GET", peer_path(UNREACHABLE_HOST), "Method not allowed"),
        ("GET", "/loadsharing/discover", None),  # §1.5: 405, message not specified
    ]
    for method, path, msg in cases:
        resp = unit.api.request(
            method, path, json={"host": "a.example"} if method in ("PUT", "PATCH") else None
        )
        try:
            if msg is None:
                body = expect(resp, 405)
                assert isinstance(body, dict), body
                assert isinstance(body.get("msg"), str), body
            else:
                expect_msg(resp, 405, msg)
        except AssertionError as exc:
            failures.append(f"{method} {path}: {exc}")
    assert failures == [], "\n".join(failures)
    assert joined_remote(get_peers(unit)) == []


def test_peer_path_errors(instance_pair: PairFactory) -> None:
    """§1.4: nothing after the slash → 400 Invalid path (any method); a malformed
    %-escape → 400 Invalid host."""
    unit = instance_pair()
    for method in ("DELETE", "GET", "POST"):
        expect_msg(unit.api.request(method, "/loadsharing/peers/"), 400, "Invalid path")
    status, body = raw_request(unit, "DELETE", "/loadsharing/peers/bad%zzhost")
    assert (status, body) == (400, {"msg": "Invalid host"})


@pytest.mark.slow
@pytest.mark.timeout(240)  # a real build: rig start and the restart can take ~45 s each
def test_joined_peer_persists_across_restart(multi_instance_group: GroupFactory) -> None:
    """§1.3: a joined peer is persisted and restored after a firmware restart; the restarted
    firmware has a working serial link (upstream W8): RAPI connected and a plug-in seen."""
    group = multi_instance_group(2)
    u0, u1 = group[0], group[1]
    host = loopback_host(u1)
    expect_msg(add_peer(u0, host, reciprocal=False), 200, "done")

    def online() -> None:
        row = row_of(get_peers(u0), u1, host=host)
        assert row["joined"] is True
        assert row["online"] is True

    eventually(online, timeout=PEER_STATUS_DEADLINE, what="peer online before the restart")

    group.restart_firmware(0)

    rows = get_peers(u0)
    row = find_peer(rows, peer_id=u1.long_id, host=host)
    assert row is not None, f"peer lost across the restart: {rows!r}"
    assert row["joined"] is True
    assert len([r for r in matching(rows, peer_id=u1.long_id, host=host) if r["joined"]]) == 1, rows
    status = get_status(u0)
    assert status["rapi_connected"] == 1, status.get("rapi_connected")
    assert status["state"] != 0
    assert status["vehicle"] == 0

    emulator_post(u0, "/api/ev/connect")

    def plugged_in() -> None:
        st = get_status(u0)
        assert st["vehicle"] == 1, (st.get("vehicle"), st.get("state"))

    eventually(plugged_in, timeout=EVSE_DEADLINE, what="restarted firmware sees the plug-in over RAPI")
    eventually(online, timeout=PEER_STATUS_DEADLINE, what="restored peer polled again")
