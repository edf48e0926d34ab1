"""Four stand-ins on loopback find each other (firmware.md §2.3, §2.4).

The issue's numbers (launch to `Server started`, resident memory, discovery time) are
measured by `python -m openevse_sim.measure`, not asserted here: timing targets belong in
benchmarks, and a loaded 2-core CI machine must not turn them into flaky failures."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.native.conftest import Sim, poll

DISCOVERY_DEADLINE = 10.0  # functional bound with slack; the measured figure is ~1 s


@pytest.mark.mdns
def test_four_instances_list_each_other_after_discover(sim_factory: Callable[..., Sim]) -> None:
    sims = [sim_factory(chr(ord("a") + i)) for i in range(4)]

    def complete() -> bool:
        for sim in sims:
            ids = {r["id"] for r in sim.peers() if r["online"] and not r["isLocal"]}
            if not {o.long_id for o in sims if o is not sim} <= ids:
                return False
        return True

    begin = time.monotonic()
    for sim in sims:
        assert sim.post("/loadsharing/discover").status_code == 200
    poll(complete, DISCOVERY_DEADLINE, "4 instances to list each other", interval=0.02)
    print(
        f"discovery, 4 instances: all listed {time.monotonic() - begin:.2f} s after the first POST discover"
    )
