"""Peer status: GET /loadsharing/status (firmware.md §1.6) and the peer poller (§3).

Unit 0 adds the others as ``localhost:<port>`` with ``reciprocal: false``. Rows are looked up
by device id once known, else by that host: a discovery sweep may rename the host (§2.4).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.support import (
    BACKOFF_CAP,
    COMPUTED_AT_RE,
    HEARTBEAT_TIMEOUT,
    LIVE_FEED_DEADLINE,
    OFFLINE_DEADLINE,
    PEER_STATUS_DEADLINE,
    Group,
    Unit,
    add_peer,
    assert_fields,
    emulator_post,
    eventually,
    expect_msg,
    get_ls_status,
    get_status,
    is_int,
    is_number,
    loopback_host,
    post_config,
    row_of,
    self_host,
    units,
)

pytestmark = pytest.mark.timeout(150)

# §1.6
STATUS_TYPES: dict[str, Any] = {
    "enabled": bool,
    "group_id": str,
    "computed_at": str,
    "failsafe_active": bool,
    "online_count": is_int,
    "offline_count": is_int,
    "peers": list,
    "allocations": list,
}
STATUS_ROW_TYPES: dict[str, Any] = {
    "id": str,
    "name": str,
    "host": str,
    "url": str,
    "ip": str,
    "online": bool,
    "joined": bool,
}
PEER_STATUS_TYPES: dict[str, Any] = dict.fromkeys(("amp", "voltage", "pilot", "state", "vehicle"), is_number)


def test_status_fields(instance_pair: Callable[[], Unit]) -> None:
    """§1.6 on a fresh unit: every field with its type; computed_at is the current UTC time
    as YYYY-MM-DDTHH:MM:SSZ; only the local device is joined and online; no allocations."""
    unit = instance_pair()
    st = get_ls_status(unit)
    assert_fields(st, STATUS_TYPES, "/loadsharing/status")
    assert COMPUTED_AT_RE.match(st["computed_at"]), st["computed_at"]
    at = datetime.strptime(st["computed_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - at).total_seconds()) < 120, f"computed_at is request time: {at}"
    assert st["enabled"] is False  # loadsharing_enabled defaults to false (§4.1)
    assert st["failsafe_active"] is False  # neither controller nor member
    assert st["allocations"] == []  # only a controller with a group max allocates
    assert (st["online_count"], st["offline_count"]) == (1, 0), "the local device counts (§1.6)"
    for i, row in enumerate(st["peers"]):
        assert_fields(row, STATUS_ROW_TYPES, f"peers[{i}]")
    local = row_of(st["peers"], unit, host=self_host(unit))
    assert local["host"] == self_host(unit)
    assert local["joined"] is True
    assert local["online"] is True
    assert "status" not in local, "status is only for polled remote peers (§1.6)"


def add_all(group: Group) -> list[Unit]:
    """Unit 0 adds every other unit (``localhost:<port>``, no reciprocal add); returns them."""
    members = units(group)
    for other in members[1:]:
        expect_msg(add_peer(members[0], loopback_host(other), reciprocal=False), 200, "done")
    return members[1:]


def peer_row(st: dict[str, Any], other: Unit) -> dict[str, Any]:
    return row_of(st["peers"], other, host=loopback_host(other))


def assert_counts_consistent(st: dict[str, Any]) -> None:
    joined = [r for r in st["peers"] if r["joined"] is True]
    online = sum(1 for r in joined if r["online"] is True)
    assert st["online_count"] == online, (st["online_count"], joined)
    assert st["offline_count"] == len(joined) - online, (st["offline_count"], joined)


def test_peer_status_ingested(rig: Group) -> None:
    """§1.6/§3.2: each added peer gets ``status`` with numeric amp, voltage, pilot, state,
    vehicle mirroring the peer's own /status; counts match the rows; /status lists the
    joined peers (§7.1)."""
    u0 = rig[0]
    others = add_all(rig)

    def ingested() -> None:
        st = get_ls_status(u0)
        for other in others:
            row = peer_row(st, other)
            assert row["joined"] is True, row
            assert row["online"] is True, row
            assert isinstance(row.get("status"), dict), f"no status yet: {row}"
            assert_fields(row["status"], PEER_STATUS_TYPES, f"status of {other.hostname}")
            own = get_status(other)
            assert row["status"]["state"] == own["state"], (row["status"], own["state"])
            assert row["status"]["vehicle"] == own["vehicle"], (row["status"], own["vehicle"])
        assert_counts_consistent(st)
        assert (st["online_count"], st["offline_count"]) == (len(rig), 0), st
        joined_ids = {str(p.get("id", "")).lower() for p in get_status(u0)["loadsharing_joined_peers"]}
        assert {u.long_id for u in units(rig)} <= joined_ids, joined_ids

    eventually(ingested, timeout=PEER_STATUS_DEADLINE, what="peer status ingested for every peer")


def test_peer_status_follows_charging(rig: Group) -> None:
    """§3.2: the live feed (WebSocket frames, not a re-fetch at the next heartbeat reconnect)
    carries a peer's session as it happens: plug in + charge → state 3, vehicle 1, amp in mA;
    unplug → 1, 0; charge again → 3. The idle peers stay idle."""
    u0 = rig[0]
    others = add_all(rig)
    charging = others[0]

    def row_status(st: dict[str, Any], unit: Unit) -> dict[str, Any]:
        status = peer_row(st, unit).get("status")
        assert isinstance(status, dict), peer_row(st, unit)
        return status

    def idle_everywhere() -> None:
        st = get_ls_status(u0)
        for other in others:
            assert (row_status(st, other)["state"], row_status(st, other)["vehicle"]) == (1, 0)

    eventually(idle_everywhere, timeout=PEER_STATUS_DEADLINE, what="every peer ingested, idle")

    def seen(state: int, vehicle: int) -> Callable[[], None]:
        def check() -> None:
            st = get_ls_status(u0)
            status = row_status(st, charging)
            assert (status["state"], status["vehicle"]) == (state, vehicle), status
            if state == 3:
                assert status["amp"] >= 1000, f"amp in mA (§1.6), at least the 6 A minimum: {status}"
            for idle in others[1:]:
                assert (row_status(st, idle)["state"], row_status(st, idle)["vehicle"]) == (1, 0)

        return check

    # Each change must arrive well within the default 30 s heartbeat, i.e. over the live feed.
    emulator_post(charging, "/api/ev/connect")
    emulator_post(charging, "/api/ev/request_charge")
    eventually(seen(3, 1), timeout=LIVE_FEED_DEADLINE, what="charging seen through the live feed")
    emulator_post(charging, "/api/ev/disconnect")
    eventually(seen(1, 0), timeout=LIVE_FEED_DEADLINE, what="unplug seen through the live feed")
    emulator_post(charging, "/api/ev/connect")
    emulator_post(charging, "/api/ev/request_charge")
    eventually(seen(3, 1), timeout=LIVE_FEED_DEADLINE, what="charging again seen through the live feed")


@pytest.mark.slow
@pytest.mark.timeout(300)  # a real build: rig start and a member restart can take ~45 s each
def test_stopped_peer_goes_offline_and_returns(rig: Group) -> None:
    """§3.2/§3.3 with ``loadsharing_heartbeat_timeout`` 5: a peer whose firmware stops goes
    offline within the heartbeat timeout (plus the 0.5 s loop and slack), the others stay
    online, the counts follow; once restarted it comes back within the poller's backoff."""
    u0 = rig[0]
    post_config(u0, {"loadsharing_heartbeat_timeout": HEARTBEAT_TIMEOUT})
    others = add_all(rig)
    victim = others[-1]

    def all_online() -> None:
        st = get_ls_status(u0)
        for other in others:
            row = peer_row(st, other)
            assert row["online"] is True, row
            assert isinstance(row.get("status"), dict), row
        assert_counts_consistent(st)
        assert (st["online_count"], st["offline_count"]) == (len(rig), 0), st

    eventually(all_online, timeout=PEER_STATUS_DEADLINE, what="every peer online")

    stopped_at = time.monotonic()
    rig.stop_member(victim.index)

    def victim_offline() -> None:
        st = get_ls_status(u0)
        row = peer_row(st, victim)
        assert row["joined"] is True, row
        assert row["online"] is False, row
        for other in others[:-1]:
            assert peer_row(st, other)["online"] is True, peer_row(st, other)
        assert_counts_consistent(st)
        assert (st["online_count"], st["offline_count"]) == (len(rig) - 1, 1), st

    eventually(victim_offline, timeout=OFFLINE_DEADLINE, what=f"{victim.hostname} offline after stop")

    rig.start_member(victim.index)
    down_for = time.monotonic() - stopped_at
    # §3.2: the retry gap doubles from 1 s while the peer is down, so the next attempt comes
    # at most about ``down_for`` + 1 s later (capped at 60 s); then one bootstrap GET.
    back_deadline = min(BACKOFF_CAP, down_for + 1.0) + PEER_STATUS_DEADLINE
    eventually(all_online, timeout=back_deadline, what=f"{victim.hostname} online again after restart")
