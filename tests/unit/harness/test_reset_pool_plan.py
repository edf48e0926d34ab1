"""RigPool's planning with fake rigs (no processes): what it prestarts, and when it stops a
pooled rig early. Real-process behaviour is in tests/harness/test_reuse*.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.rigpool import RigPool
from harness.settings import Settings


class FakeRig:
    started: list[int] = []

    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    def start(self, **kw: Any) -> FakeRig:
        FakeRig.started.append(self.n)
        return self

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        return iter([])  # no pairs: nothing to snapshot or reset

    def log_paths(self) -> dict[str, Path]:
        return {}


def pool(tmp_path: Path, scope: str = "session") -> RigPool:
    FakeRig.started = []
    return RigPool(
        Settings(),
        scope=scope,
        workdir=lambda n: tmp_path,
        factory=lambda n, wd: FakeRig(n),  # type: ignore[arg-type,return-value]
    )


def closed(rig: object) -> bool:
    assert isinstance(rig, FakeRig)
    return rig.closed


def drain(p: RigPool) -> list[tuple[int, bool]]:
    """Wait for every prestart; (size, for a fresh test) of each."""
    for *_, fut in p.warming:
        fut.result(timeout=10)
    return sorted((n, fresh) for n, fresh, *_ in p.warming)


PLAN = [
    ("t1", 2, False),
    ("t2", 3, False),
    ("t3", 2, True),
    ("t4", 3, True),
    ("t5", 2, False),
    ("t6", 0, False),
]


def test_prestart_one_pooled_rig_per_size_and_one_spare(tmp_path: Path) -> None:
    p = pool(tmp_path)
    p.plan(PLAN, prestart=True)
    assert drain(p) == [(2, False), (2, True), (3, False)]  # spare for t3 only
    try:
        p.at("t3")
        lease = p.acquire(2, test="t3", fresh=True)
        assert lease.pooled.fresh
        assert drain(p) == [(2, False), (3, False), (3, True)]  # the next spare: t4's
    finally:
        p.close()
    assert p.warming == []
    assert p.stats.started == p.stats.torn_down == 4


def test_no_prestart_without_the_option(tmp_path: Path) -> None:
    p = pool(tmp_path)
    p.plan(PLAN, prestart=False)
    assert p.warming == []
    p.close()


def test_a_pooled_rig_no_later_test_needs_is_stopped_on_release(tmp_path: Path) -> None:
    p = pool(tmp_path)
    plan = [("a", 3, False), ("b", 2, False), ("c", 3, False)]
    p.plan(plan, prestart=False)
    p.at("a")
    first = p.acquire(3, test="a")
    p.release(first)
    assert not closed(first.rig)  # "c" still needs a rig of 3
    p.at("b")
    two = p.acquire(2, test="b")
    p.release(two)
    assert closed(two.rig)  # no later test needs a rig of 2
    p.at("c")
    again = p.acquire(3, test="c")
    assert again.reused
    assert again.rig is first.rig
    p.release(again)
    assert closed(again.rig)
    p.close()


def test_a_later_test_of_unknown_size_keeps_rigs(tmp_path: Path) -> None:
    p = pool(tmp_path)
    p.plan([("a", 2, False), ("b", 0, False)], prestart=False)  # b: multi_instance_group
    p.at("a")
    lease = p.acquire(2, test="a")
    p.release(lease)
    assert not closed(lease.rig)
    p.close()
    assert closed(lease.rig)
