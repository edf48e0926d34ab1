"""Charging basics (firmware.md §7.1, §7.3, §7.4), driven through the EVSE emulator's control
API (evse.md §6) and observed on the firmware's HTTP API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.support import (
    CLAIMS_DEADLINE,
    EVSE_DEADLINE,
    Unit,
    assert_fields,
    body_of,
    emulator_post,
    eventually,
    expect,
    expect_msg,
    get_status,
    is_int,
    is_number,
)

pytestmark = pytest.mark.timeout(90)

PairFactory = Callable[[], Unit]
MANUAL_CLIENT = 65537  # §7.4
MANUAL_PRIORITY = 1000
API_PRIORITY = 500
TEST_CLIENT = 9999

# §7.1
STATUS_TYPES: dict[str, Any] = {
    "state": is_int,
    "status": str,
    "vehicle": is_int,
    "amp": is_number,
    "voltage": is_number,
    "pilot": is_number,
    "elapsed": is_number,
    "rapi_connected": is_int,
    "evse_connected": is_int,
    "loadsharing_peers_version": is_int,
    "loadsharing_joined_peers": list,
}


def status_is(unit: Unit, **want: Any) -> Callable[[], dict[str, Any]]:
    def check() -> dict[str, Any]:
        st = get_status(unit)
        got = {k: st.get(k) for k in want}
        assert got == want, f"/status {got} != {want}"
        return st

    return check


def test_status_fields(instance_pair: PairFactory) -> None:
    """§7.1: the key fields with their types; an idle, linked EVSE without a car."""
    unit = instance_pair()
    st = get_status(unit)
    assert_fields(st, STATUS_TYPES, "/status")
    assert st["state"] == 1, "EVSE link up, no car: state A (1)"
    assert st["vehicle"] == 0
    assert st["amp"] == 0
    assert st["pilot"] >= 0
    assert st["elapsed"] >= 0
    assert st["rapi_connected"] == 1
    assert st["evse_connected"] == 1
    ids = [str(p.get("id", "")).lower() for p in st["loadsharing_joined_peers"]]
    assert unit.long_id in ids, f"the joined list includes the local device: {ids}"


def test_charging_session(instance_pair: PairFactory) -> None:
    """Plug in → state 2, vehicle 1; request charge → state 3 with amp > 0 (mA); the firmware
    agrees with the emulator; unplug → state 1, vehicle 0."""
    unit = instance_pair()
    emulator_post(unit, "/api/ev/connect")
    eventually(status_is(unit, state=2, vehicle=1), timeout=EVSE_DEADLINE, what="plug-in seen")

    emulator_post(unit, "/api/ev/request_charge")

    def charging() -> None:
        st = status_is(unit, state=3, vehicle=1)()
        # milliamps (§7.1): a session draws at least the J1772 minimum of 6 A = 6000 mA; a value
        # in amps would stay below 100.
        assert st["amp"] >= 1000, f"amp {st['amp']} (mA) while charging"
        evse = expect(unit.emulator_api.get("/api/evse/status"), 200)
        assert evse["state"] == 3, evse

    eventually(charging, timeout=EVSE_DEADLINE, what="charging with current")

    emulator_post(unit, "/api/ev/disconnect")
    eventually(status_is(unit, state=1, vehicle=0), timeout=EVSE_DEADLINE, what="unplug seen")


def test_override_disabled_sleeps_and_delete_restores(instance_pair: PairFactory) -> None:
    """§7.3: ``/override`` state disabled → 201 Created, the EVSE sleeps (254); DELETE → 200
    Deleted, ``{}`` again and the EVSE wakes (state 1 without a car)."""
    unit = instance_pair()
    assert expect(unit.api.get("/override"), 200) == {}
    expect_msg(unit.api.post("/override", json={"state": "disabled"}), 201, "Created")
    override = expect(unit.api.get("/override"), 200)
    assert override.get("state") == "disabled", override
    eventually(status_is(unit, state=254), timeout=EVSE_DEADLINE, what="sleeping after override")

    expect_msg(unit.api.delete("/override"), 200, "Deleted")
    assert expect(unit.api.get("/override"), 200) == {}
    eventually(status_is(unit, state=1), timeout=EVSE_DEADLINE, what="awake after override removed")


def test_override_charge_current_in_claims_target(instance_pair: PairFactory) -> None:
    """§7.3/§7.4: a manual override with charge_current 16 is the Manual claim (65537,
    priority 1000) and wins ``/claims/target``."""
    unit = instance_pair()
    expect_msg(unit.api.post("/override", json={"state": "active", "charge_current": 16}), 201, "Created")

    def target() -> None:
        body = expect(unit.api.get("/claims/target"), 200)
        assert body["properties"]["charge_current"] == 16, body
        assert body["claims"]["charge_current"] == MANUAL_CLIENT, body

    eventually(target, timeout=CLAIMS_DEADLINE, what="override in /claims/target")
    claims = expect(unit.api.get("/claims"), 200)
    manual = [c for c in claims if c.get("client") == MANUAL_CLIENT]
    assert len(manual) == 1, claims
    assert manual[0]["priority"] == MANUAL_PRIORITY, manual
    assert manual[0]["charge_current"] == 16, manual


def test_claims_lifecycle(instance_pair: PairFactory) -> None:
    """§7.4: GET /claims shape; POST /claims/<client> → 200 done at priority 500, visible in
    /claims and /claims/target; DELETE → 200, then 404 Not found; POST /claims → 405."""
    unit = instance_pair()
    claims = expect(unit.api.get("/claims"), 200)
    assert isinstance(claims, list), claims
    for claim in claims:
        assert_fields(claim, {"client": is_int, "priority": is_int, "auto_release": bool}, "claim")
    assert TEST_CLIENT not in [c["client"] for c in claims]

    expect_msg(unit.api.post(f"/claims/{TEST_CLIENT}", json={"max_current": 20}), 200, "done")
    mine = expect(unit.api.get(f"/claims/{TEST_CLIENT}"), 200)
    assert mine["priority"] == API_PRIORITY, mine
    assert mine["max_current"] == 20, mine
    listed = [c for c in expect(unit.api.get("/claims"), 200) if c.get("client") == TEST_CLIENT]
    assert len(listed) == 1, listed
    assert listed[0]["max_current"] == 20, listed

    def target() -> None:
        body = expect(unit.api.get("/claims/target"), 200)
        assert body["properties"]["max_current"] == 20, body
        assert body["claims"]["max_current"] == TEST_CLIENT, body

    eventually(target, timeout=CLAIMS_DEADLINE, what="claim in /claims/target")

    expect_msg(unit.api.delete(f"/claims/{TEST_CLIENT}"), 200, "done")
    expect_msg(unit.api.get(f"/claims/{TEST_CLIENT}"), 404, "Not found")
    resp = unit.api.post("/claims", json={"max_current": 20})
    assert resp.status_code == 405, (resp.status_code, body_of(resp))
