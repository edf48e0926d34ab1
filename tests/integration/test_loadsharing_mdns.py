"""mDNS: the advertisement (firmware.md §2.1) seen by a zeroconf browser of the test, and the
firmware's own discovery (§1.5, §2.2-§2.4) between the units of one rig.

Units of other rigs on the same network (a concurrent run, an xdist worker) may be seen too,
as on a real LAN: these tests reason only about their own rig's units, matched by device id,
and never about the length of a list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from harness.mdns import ServiceRecord, browse
from tests.integration.support import (
    DISCOVERY_DEADLINE,
    MDNS_BROWSE_DEADLINE,
    PEER_STATUS_DEADLINE,
    Group,
    Unit,
    add_peer,
    delete_peer,
    eventually,
    expect_msg,
    get_peers,
    matching,
    row_of,
    units,
)

pytestmark = [pytest.mark.mdns, pytest.mark.timeout(180)]

DISCOVERY_BUG = (
    "firmware.md §2.2: the branch browses 'openevse.tcp' (fixed upstream by PR #1219); with the "
    "newest EpoxymDNS native builds discover no peers"
)


# §2.2: a sweep keeps at most 20 results.
MAX_RESULTS = 20


def crowd_note(interfaces: list[str]) -> str:
    """Failure diagnosis: how crowded this mDNS network is. With more than 20 units advertised,
    a unit may legitimately not list all of its own rig (§2.2)."""
    seen = browse(interfaces=interfaces, timeout=3.0)
    return (
        f"{len(seen)} _openevse._tcp services visible on {interfaces} right now "
        f"(a sweep keeps at most {MAX_RESULTS}, firmware.md §2.2)"
    )


def final_host(unit: Unit) -> str:
    """§2.4: a discovered entry's host ends as ``<instance>.local:<port>`` (port not 80/443)."""
    return f"{unit.hostname}.local:{unit.firmware_port}"


def advertised(records: dict[str, ServiceRecord], unit: Unit) -> bool:
    rec = records.get(unit.hostname)
    return rec is not None and rec.properties.get("id") == unit.long_id and rec.port == unit.firmware_port


def test_every_unit_is_advertised(rig: Group, mdns_interfaces: list[str]) -> None:
    """§2.1: ``_openevse._tcp``, instance name = hostname, port = www_http_port, TXT id = long
    id (lower-case hex), ssl=0, type and version present."""
    members = units(rig)
    records = browse(
        interfaces=mdns_interfaces,
        timeout=MDNS_BROWSE_DEADLINE,
        want=lambda recs: all(advertised(recs, u) for u in members),
    )
    for unit in members:
        rec = records.get(unit.hostname)
        assert rec is not None, f"{unit.hostname} not advertised; seen: {sorted(records)}"
        assert rec.properties.get("id") == unit.long_id, rec
        assert rec.port == unit.firmware_port, rec
        assert rec.properties.get("ssl") == "0", rec
        assert rec.properties.get("type"), rec
        assert "version" in rec.properties, rec


def check_discovered(observer: Unit, other: Unit, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``other`` is listed on ``observer`` as a discovered, online, not-joined entry (§2.4)."""
    row = row_of(rows, other)
    where = f"unit {observer.index} lists unit {other.index} as {row}"
    assert row["online"] is True, f"not online: {where}"
    assert row["joined"] is False, f"no auto-join from discovery (§2.4): {where}"
    assert row["isLocal"] is False, where
    assert row["name"] == other.hostname, f"name: {where}"
    assert row["host"] in (f"{other.hostname}.local", final_host(other)), f"host: {where}"
    assert row["url"].startswith("http://"), f"url: {where}"
    assert row["url"].endswith(f":{other.firmware_port}"), f"url port: {where}"
    return row


def test_discovery_lists_every_other_unit(
    rig: Group, mdns_interfaces: list[str], known_bug: Callable[[str], None]
) -> None:
    """§1.5/§2.2: after POST /loadsharing/discover on every unit, each lists all N-1 others
    (by TXT id) discovered and online, and never itself twice (self filter)."""
    known_bug(DISCOVERY_BUG)
    members = units(rig)
    for unit in members:
        expect_msg(unit.api.post("/loadsharing/discover"), 200, "done")
    deadline = time.monotonic() + DISCOVERY_DEADLINE

    def lists_all_others(observer: Unit) -> Callable[[], None]:
        def check() -> None:
            rows = get_peers(observer)
            for other in members:
                if other is not observer:
                    check_discovered(observer, other, rows)
            selves = matching(rows, peer_id=observer.long_id)
            assert len(selves) == 1, f"self filter (§2.2): unit {observer.index} lists itself: {selves}"
            assert selves[0]["isLocal"] is True, f"{selves}"

        return check

    # Each unit in turn, all within one deadline counted from the POSTs.
    for observer in members:
        eventually(
            lists_all_others(observer),
            timeout=max(0.0, deadline - time.monotonic()),
            what=f"unit {observer.index} lists all {len(members) - 1} others",
            diagnose=lambda: crowd_note(mdns_interfaces),
        )


@pytest.mark.slow
@pytest.mark.fresh_rig  # rows left by earlier tests (a DELETE keeps them, §1.4) could pose as discovered
def test_discovered_peer_join_rename_delete(
    rig: Group, mdns_interfaces: list[str], known_bug: Callable[[str], None]
) -> None:
    """§1.3/§2.4: a discovered entry joined by its listed host is flipped to joined (no second
    row); a later sweep renames it to ``<instance>.local:<port>``; it is still found by id,
    the old host is then 404 and the current host deletes it."""
    known_bug(DISCOVERY_BUG)
    members = units(rig)
    u0, others = members[0], members[1:]
    expect_msg(u0.api.post("/loadsharing/discover"), 200, "done")

    def discovered() -> dict[str, str]:
        rows = get_peers(u0)
        return {o.long_id: check_discovered(u0, o, rows)["host"] for o in others}

    listed = eventually(
        discovered,
        timeout=DISCOVERY_DEADLINE,
        what="unit0 discovers the others",
        diagnose=lambda: crowd_note(mdns_interfaces),
    )

    for other in others:
        # reciprocal false: the far side would be told "<unit0>.local", which only mDNS resolves
        expect_msg(add_peer(u0, listed[other.long_id], reciprocal=False), 200, "done")
    rows = get_peers(u0)
    for other in others:
        same = matching(rows, peer_id=other.long_id, host=listed[other.long_id])
        assert len(same) == 1, f"joining must flip the discovered entry, not add one (§1.3): {same}"
        assert same[0]["joined"] is True, same

    expect_msg(u0.api.post("/loadsharing/discover"), 200, "done")

    def renamed_and_polled() -> None:
        rows = get_peers(u0)
        for other in others:
            row = row_of(rows, other)
            assert row["host"] == final_host(other), row
            assert row["joined"] is True, row
            assert row["online"] is True, row

    eventually(
        renamed_and_polled,
        timeout=DISCOVERY_DEADLINE + PEER_STATUS_DEADLINE,
        what="joined peers renamed by a later sweep and online",
    )

    for other in others:
        old = listed[other.long_id]
        if old != final_host(other):
            expect_msg(delete_peer(u0, old), 404, "Peer not found")
        expect_msg(delete_peer(u0, final_host(other)), 200, "done")
    rows = get_peers(u0)
    for other in others:
        assert [r for r in matching(rows, peer_id=other.long_id) if r["joined"]] == [], rows
