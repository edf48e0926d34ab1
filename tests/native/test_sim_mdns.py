"""Real mDNS on loopback between stand-ins (firmware.md §2): advertisement, sweeps, §2.4 renaming."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.native.conftest import Sim, poll

pytestmark = pytest.mark.mdns

# A fresh sweep's results come ~1 s after POST discover (measured by `python -m
# openevse_sim.measure` and bench/); the deadline leaves room for a loaded machine, where a
# sweep's 1 s window can close early and the next periodic sweep (10 s, §2.3) finds them.
DISCOVERY_DEADLINE = 12.0


def row_for(sim: Sim, other: Sim) -> dict[str, Any] | None:
    return next((r for r in sim.peers() if r["id"] == other.long_id), None)


def everyone_sees_everyone(sims: list[Sim]) -> bool:
    for sim in sims:
        for other in sims:
            if other is sim:
                continue
            row = row_for(sim, other)
            if row is None or not row["online"] or row["url"] != f"http://127.0.0.1:{other.port}":
                return False
    return True


@pytest.mark.parametrize("count", [2, 3])
def test_instances_discover_each_other(sim_factory: Callable[..., Sim], count: int) -> None:
    sims = [sim_factory(chr(ord("a") + i)) for i in range(count)]
    begin = time.monotonic()
    for sim in sims:
        assert sim.post("/loadsharing/discover").json() == {"msg": "done"}
    poll(lambda: everyone_sees_everyone(sims), DISCOVERY_DEADLINE, f"{count} instances to list each other")
    elapsed = time.monotonic() - begin
    print(f"discovery of {count} instances: {elapsed:.2f} s after POST discover")
    for sim in sims:
        rows = sim.peers()
        assert rows[0]["isLocal"] is True
        assert rows[0]["id"] == sim.long_id
        for other in sims:
            if other is sim:
                continue
            row = row_for(sim, other)
            assert row is not None
            assert row["joined"] is False  # no auto-join from discovery (§2.4)
            assert row["name"] == other.hostname
            assert row["ip"] == "127.0.0.1"
            assert row["host"] in (f"{other.hostname}.local", f"{other.hostname}.local:{other.port}")
        # Self filtering: never our own id or name among the remote rows (§2.2).
        assert [r for r in rows[1:] if r["id"] == sim.long_id or r["name"] == sim.hostname] == []


def test_second_sweep_adds_port_and_manual_entry_is_renamed(sim_factory: Callable[..., Sim]) -> None:
    """§2.4: `<instance>.local` becomes `<instance>.local:<port>`; `localhost:<port>` is renamed
    once its id is known, the rename is persisted, and DELETE needs the new host."""
    a, b = sim_factory("a"), sim_factory("b")
    assert (
        a.post("/loadsharing/peers", {"host": f"localhost:{b.port}", "reciprocal": False}).status_code == 200
    )
    renamed = f"{b.hostname}.local:{b.port}"

    def rename_done() -> bool:
        a.post("/loadsharing/discover")
        rows = [r for r in a.peers() if r["id"] == b.long_id]
        return len(rows) == 1 and rows[0]["host"] == renamed and rows[0]["joined"]

    poll(rename_done, 30, "localhost entry renamed after id learned + sweep", interval=0.5)
    stored = (a.cwd / "epoxyfsdata" / "loadsharing_peers.json").read_text()
    assert renamed in stored
    assert a.delete(f"/loadsharing/peers/localhost%3A{b.port}").status_code == 404
    assert a.delete(f"/loadsharing/peers/{renamed.replace(':', '%3A')}").status_code == 200


def test_stopped_instance_goes_offline_in_the_next_sweep(sim_factory: Callable[..., Sim]) -> None:
    a, b = sim_factory("a"), sim_factory("b")
    a.post("/loadsharing/discover")
    poll(lambda: (r := row_for(a, b)) is not None and r["online"], DISCOVERY_DEADLINE, "B discovered online")
    b.stop()  # SIGTERM: the stand-in unregisters (mDNS goodbye)
    a.post("/loadsharing/discover")
    poll(
        lambda: (r := row_for(a, b)) is not None and not r["online"],
        DISCOVERY_DEADLINE,
        "B offline after the sweep",
    )


def test_a_sweep_keeps_at_most_max_results(sim_factory: Callable[..., Sim]) -> None:
    """The real query keeps at most 20 results (§2.2); the cap is honoured (here set to 1)."""
    capped = sim_factory("capped", env={"OPENEVSE_SIM_MAX_RESULTS": "1"})
    others = [sim_factory(name) for name in ("b", "c")]
    assert capped.post("/loadsharing/discover").json() == {"msg": "done"}
    for other in others:  # both are up and advertised: a sweep can see them
        assert other.post("/loadsharing/discover").status_code == 200
        poll(lambda o=other: row_for(o, capped) is not None, DISCOVERY_DEADLINE, "the capped unit advertised")

    def discovered() -> list[dict[str, Any]]:
        return [r for r in capped.peers() if not r["isLocal"]]

    poll(lambda: len(discovered()) >= 1, DISCOVERY_DEADLINE, "one discovered peer")
    capped.post("/loadsharing/discover")
    poll(lambda: "Query complete" in capped.stdout.read_text(), DISCOVERY_DEADLINE, "a sweep completed")
    assert len(discovered()) == 1, discovered()
