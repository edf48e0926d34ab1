"""The J1772 + EV model: transitions, $AT emission, clamping, energy, faults, heartbeat."""

from __future__ import annotations

import pytest

from emulator import model
from emulator.model import Controller


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ctl(clock: FakeClock) -> Controller:
    c = Controller(clock=clock, mcu_id="EMTEST0001")
    assert c.pop_events() == [("AB", ["00", "8.2.2"])]  # boot announcement
    return c


def ats(c: Controller) -> list[list[str]]:
    return [values for code, values in c.pop_events() if code == "AT"]


def test_starts_in_a_with_nothing_drawn(ctl: Controller) -> None:
    assert ctl.status() == model.Status(state=model.STATE_A, pilot=1, capacity=32, vflags=0)
    assert ctl.meter() == (0, 240_000)
    assert ats(ctl) == []


def test_connect_charge_stop_disconnect_emits_at_each_time(ctl: Controller) -> None:
    wakes: list[int] = []
    ctl.set_wakeup(lambda: wakes.append(1))
    ctl.ev_connect(True)
    assert ats(ctl) == [["02", "02", "32", "0100"]]
    ctl.ev_request(True)
    assert ats(ctl) == [["03", "03", "32", "0140"]]
    assert ctl.meter() == (32_000, 240_000)
    ctl.ev_request(False)
    assert ats(ctl) == [["02", "02", "32", "0100"]]
    ctl.ev_connect(False)
    assert ats(ctl) == [["01", "01", "32", "0000"]]
    assert len(wakes) == 4


def test_no_at_without_a_change(ctl: Controller) -> None:
    ctl.ev_connect(True)
    ctl.pop_events()
    ctl.ev_connect(True)
    ctl.tick()
    ctl.set_capacity(20, "volatile")  # capacity alone is not a state change
    assert ats(ctl) == []


@pytest.mark.parametrize(("mode", "code"), [("sleep", "fe"), ("disabled", "ff")])
def test_sleep_and_disable_open_the_relay_and_emit_at(ctl: Controller, clock: FakeClock, mode, code) -> None:
    ctl.ev_connect(True)
    ctl.ev_request(True)
    ctl.pop_events()
    ctl.set_mode(mode)
    assert ats(ctl) == [[code, "02", "32", "0100"]]  # EV still connected, relay open
    assert ctl.meter()[0] == 0
    before = ctl.energy()
    clock.now += 60
    ctl.tick()
    assert ctl.energy() == before, "energy must stop growing at once"
    ctl.set_mode("active")
    assert ats(ctl) == [["03", "03", "32", "0140"]]


def test_energy_elapsed_and_soc_while_charging(ctl: Controller, clock: FakeClock) -> None:
    ctl.ev_set_max_amps(16)
    ctl.ev_connect(True)
    ctl.ev_request(True)
    clock.now += 3600
    ctl.tick()
    ws, wh = ctl.energy()
    assert ws == 16 * 240 * 3600
    assert wh == 16 * 240
    assert ctl.elapsed_s() == 3600
    assert ctl.ev_soc == pytest.approx(50 + 3.84 / 60 * 100)


def test_new_plug_in_starts_a_new_session(ctl: Controller, clock: FakeClock) -> None:
    ctl.ev_connect(True)
    ctl.ev_request(True)
    clock.now += 10
    ctl.tick()
    assert ctl.energy()[0] > 0
    ctl.ev_connect(False)
    ctl.ev_connect(True)
    assert ctl.energy()[0] == 0
    assert ctl.energy()[1] > 0  # the total survives
    assert ctl.elapsed_s() == 0


def test_full_battery_stops_the_car(ctl: Controller) -> None:
    ctl.ev_connect(True)
    ctl.ev_request(True)
    ctl.pop_events()
    ctl.ev_set_soc(100)
    assert ats(ctl) == [["02", "02", "32", "0100"]]
    ctl.ev_request(True)
    assert ctl.status().state == model.STATE_B


def test_car_draws_min_of_pilot_and_its_limit(ctl: Controller) -> None:
    ctl.ev_connect(True)
    ctl.ev_request(True)
    ctl.ev_set_max_amps(20)
    assert ctl.meter()[0] == 20_000
    assert ctl.set_capacity(10, "volatile") == (True, 10)
    assert ctl.meter()[0] == 10_000


@pytest.mark.parametrize(
    ("amps", "kind", "expected"),
    [
        (16, "volatile", (True, 16)),
        (2, "volatile", (False, 6)),
        (100, "volatile", (False, 80)),
        (6, "saved", (True, 6)),
        (80, "saved", (True, 80)),
        (81, "saved", (False, 80)),
        (40, "max", (True, 40)),
        (90, "max", (False, 80)),
        (1, "max", (False, 6)),
    ],
)
def test_sc_clamps(ctl: Controller, amps: int, kind, expected) -> None:
    assert ctl.set_capacity(amps, kind) == expected


def test_configured_max_bounds_later_claims_and_pilot(ctl: Controller) -> None:
    ctl.set_capacity(40, "volatile")
    assert ctl.set_capacity(20, "max") == (True, 20)
    assert ctl.capacity_info() == (6, 80, 20, 20)
    assert ctl.set_capacity(32, "volatile") == (False, 20)


def test_l1_limits_the_hardware_maximum_and_voltage(ctl: Controller) -> None:
    ctl.set_service_level("L1")
    assert ctl.capacity_info() == (6, 16, 16, 80)
    assert ctl.meter()[1] == 120_000
    amps, flags = ctl.settings()
    assert amps == 16
    assert not flags & model.SF_L2
    assert flags & model.SF_AUTO_SVC_LEVEL_DISABLED


def test_saved_capacity_survives_a_reset_volatile_does_not(ctl: Controller) -> None:
    ctl.set_capacity(20, "saved")
    ctl.set_capacity(10, "volatile")
    ctl.reset()
    assert ctl.capacity_info()[2] == 20


def test_reset_queues_ab_then_at_if_state_moved(ctl: Controller) -> None:
    ctl.ev_connect(True)
    ctl.set_mode("sleep")
    ctl.pop_events()
    ctl.reset()
    events = ctl.pop_events()
    assert events[0] == ("AB", ["00", "8.2.2"])
    assert events[1:] == [("AT", ["02", "02", "32", "0100"])]


def test_discard_keeps_a_pending_ab(ctl: Controller) -> None:
    ctl.reset()
    ctl.ev_connect(True)
    ctl.discard_events()
    assert ctl.pop_events() == [("AB", ["00", "8.2.2"])]


@pytest.mark.parametrize(
    ("fault", "state", "vflag"),
    [
        ("gfci", 0x06, 0x0080),
        ("no_ground", 0x07, 0x0020),
        ("stuck_relay", 0x08, 0x0002),
        ("diode_check", 0x05, 0),
        ("over_temp", 0x0A, 0),
        ("gfi_self_test", 0x09, 0x0002),
        ("over_current", 0x0B, 0),
        ("relay_closure", 0x0E, 0x0002),
    ],
)
def test_faults_have_their_own_state_and_open_the_relay(ctl: Controller, fault, state, vflag) -> None:
    ctl.ev_connect(True)
    ctl.ev_request(True)
    ctl.pop_events()
    ctl.trigger_fault(fault)
    st = ctl.status()
    assert st.state == state
    assert st.vflags == vflag | model.VF_EV_CONNECTED
    assert ctl.meter()[0] == 0
    assert ats(ctl) == [[f"{state:02x}", "02", "32", f"{vflag | 0x100:04x}"]]
    ctl.clear_faults()
    assert ctl.status().state == model.STATE_C
    assert ats(ctl) == [["03", "03", "32", "0140"]]


def test_fault_counters_and_temperatures(ctl: Controller) -> None:
    ctl.trigger_fault("gfci")
    ctl.trigger_fault("gfci")  # already active: counted once
    ctl.clear_faults()
    ctl.trigger_fault("no_ground")
    ctl.trigger_fault("stuck_relay")
    assert ctl.fault_counts() == (1, 1, 1)
    assert ctl.error_flags() == 0x04 | 0x02
    ctl.clear_faults()
    ctl.trigger_fault("over_temp")
    assert ctl.temperatures() == (model.TEMP_HOT, model.TEMP_HOT, -2560)


def test_unknown_fault_is_refused(ctl: Controller) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        ctl.trigger_fault("meltdown")


def test_heartbeat_missed_pulse_drops_to_fallback_until_acked(ctl: Controller, clock: FakeClock) -> None:
    ctl.set_capacity(32, "volatile")
    ctl.heartbeat_configure(5, 6)
    for _ in range(10):  # pulses every second keep it alive
        clock.now += 1
        assert ctl.heartbeat_pulse()
        ctl.tick()
    assert ctl.heartbeat() == (5, 6, model.HS_NEVER_MISSED)
    assert ctl.capacity_info()[2] == 32
    clock.now += 5.5  # one interval without a pulse
    ctl.tick()
    assert ctl.heartbeat() == (5, 6, model.HS_MISSED_NOACK)
    assert ctl.capacity_info()[2] == 6
    assert not ctl.heartbeat_pulse(), "a pulse after a missed one gets $NK"
    assert ctl.set_capacity(32, "volatile") == (False, 6), "claims stay capped until acked"
    assert not ctl.heartbeat_ack(164), "wrong cookie"
    assert ctl.heartbeat_ack(165)
    assert ctl.heartbeat() == (5, 6, model.HS_MISSED_ACKED)
    assert ctl.capacity_info()[2] == 32, "ampacity restored to what was asked"
    assert ctl.heartbeat_pulse()


def test_heartbeat_expiry_is_noticed_on_pulse_without_a_tick(ctl: Controller, clock: FakeClock) -> None:
    ctl.heartbeat_configure(5, 6)
    clock.now += 6
    assert not ctl.heartbeat_pulse()


def test_heartbeat_interval_zero_disables_and_restores(ctl: Controller, clock: FakeClock) -> None:
    ctl.heartbeat_configure(5, 6)
    clock.now += 10
    ctl.tick()
    assert ctl.capacity_info()[2] == 6
    ctl.heartbeat_configure(0, 0)
    assert ctl.heartbeat() == (0, 0, model.HS_MISSED_ACKED)
    assert ctl.capacity_info()[2] == 32
    clock.now += 100
    ctl.tick()
    assert ctl.heartbeat_pulse()


def test_heartbeat_off_by_default_never_expires(ctl: Controller, clock: FakeClock) -> None:
    clock.now += 3600
    ctl.tick()
    assert ctl.heartbeat() == (0, 0, 0)
    assert ctl.heartbeat_pulse()


def test_mcu_ids_are_unique_and_well_formed() -> None:
    ids = {model.new_mcu_id() for _ in range(200)}
    assert len(ids) == 200
    for mcu in ids:
        assert len(mcu) == 10
        int(mcu[6:], 16)


def test_json_snapshots(ctl: Controller) -> None:
    ctl.ev_connect(True)
    ctl.ev_request(True)
    evse = ctl.evse_json()
    assert evse["state"] == 3
    assert evse["state_name"] == "charging"
    assert evse["actual_current"] == 32
    assert evse["mcu_id"] == "EMTEST0001"
    ev = ctl.ev_json()
    assert ev["connected"] is True
    assert ev["requesting_charge"] is True
    assert ev["actual_charge_rate_kw"] == pytest.approx(7.68)
