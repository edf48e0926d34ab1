"""Peer poller (firmware.md §3.1 to §3.3): status object, offline after the heartbeat timeout, recovery."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.native.conftest import Sim, poll

HEARTBEAT = 5


def b_row(a: Sim, b: Sim) -> dict[str, Any] | None:
    """B's row on A: added as localhost:<port>, possibly renamed by discovery (§2.4), so match id too."""
    hosts = (f"localhost:{b.port}", f"{b.hostname}.local:{b.port}")
    return next((r for r in a.ls_status()["peers"] if r["host"] in hosts or r["id"] == b.long_id), None)


def test_status_object_offline_and_back(sim_factory: Callable[..., Sim]) -> None:
    a, b = sim_factory("a"), sim_factory("b")
    assert a.post("/config", {"loadsharing_heartbeat_timeout": HEARTBEAT}).status_code == 200
    assert (
        a.post("/loadsharing/peers", {"host": f"localhost:{b.port}", "reciprocal": False}).status_code == 200
    )

    row = poll(lambda: (r := b_row(a, b)) is not None and "status" in r and r["online"] and r, 15, "B polled")
    assert set(row["status"]) == {
        "amp",
        "voltage",
        "pilot",
        "vehicle",
        "state",
        "min_current",
        "max_current",
        "priority",
    }
    assert row["status"]["state"] == 0  # B has no EVSE link
    assert row["joined"] is True
    poll(
        lambda: (r := b_row(a, b)) is not None and r["id"] == b.long_id and r["name"] == b.hostname,
        10,
        "identity",
    )
    counts = a.ls_status()
    assert counts["online_count"] == 2
    assert counts["offline_count"] == 0

    b.stop()
    stopped = time.monotonic()
    poll(lambda: (r := b_row(a, b)) is not None and not r["online"], HEARTBEAT + 1, "B offline")
    # Offline once the last status is older than the heartbeat timeout (§3.3), not before:
    # the cached status is at most HEARTBEAT old, plus one poll interval of slack.
    assert time.monotonic() - stopped <= HEARTBEAT + 1
    assert a.ls_status()["offline_count"] == 1
    assert "status" in (b_row(a, b) or {})  # the last status stays cached

    b.start()
    # Backoff is 1 s * 2^n: after ~6 s down the next retry comes within 8 s.
    poll(lambda: (r := b_row(a, b)) is not None and r["online"], 20, "B online again")
