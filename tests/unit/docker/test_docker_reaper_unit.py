"""Reaper selection logic against a fake engine: only our session, only dead owners."""

from __future__ import annotations

import socket
from pathlib import Path

from docker_fakes import FakeEngine

from harness.docker import labels as L
from harness.docker import reaper

IMAGE = "img"


def add(engine: FakeEngine, labels: dict[str, str]) -> str:
    return engine.containers.create(IMAGE, labels=labels).short_id


def owner(pid: str, start: str) -> dict[str, str]:
    return {L.OWNER_PID: pid, L.OWNER_START: start, L.OWNER_HOST: socket.gethostname()}


def test_session_sweep_removes_only_that_session() -> None:
    engine = FakeEngine(images={IMAGE})
    mine = [add(engine, {L.SESSION: "s1"}) for _ in range(3)]
    other = add(engine, {L.SESSION: "s2"})
    foreign = add(engine, {"com.example.session": "s1"})
    assert sorted(reaper.remove_session_containers(engine, "s1")) == sorted(mine)  # type: ignore[arg-type]
    assert {c.short_id for c in engine.containers_} == {other, foreign}
    assert engine.list_filters[-1] == {"label": f"{L.SESSION}=s1"}


def test_sweep_looks_again_after_removing_and_stops_when_clean() -> None:
    engine = FakeEngine(images={IMAGE})
    add(engine, {L.SESSION: "s1"})
    assert reaper.sweep(lambda: engine, "s1", settle=0.0) == 1  # type: ignore[arg-type, return-value]
    assert len(engine.list_filters) == 2  # one pass removed something, the second found nothing
    engine.list_filters.clear()
    assert reaper.sweep(lambda: engine, "s1", settle=0.0) == 0  # type: ignore[arg-type, return-value]
    assert len(engine.list_filters) == 1


def test_dead_owner_sweep_keeps_live_owners_and_unlabelled(tmp_path: Path) -> None:
    (tmp_path / "100").mkdir()
    fields = ["S"] + ["0"] * 18 + ["5000", "0"]
    (tmp_path / "100" / "stat").write_text(f"100 (python3) {' '.join(fields)}\n")
    engine = FakeEngine(images={IMAGE})
    live = add(engine, {L.SESSION: "a", **owner("100", "5000")})
    reused = add(engine, {L.SESSION: "b", **owner("100", "4000")})
    gone = add(engine, {L.SESSION: "c", **owner("200", "5000")})
    other_host = add(engine, {L.SESSION: "d", **owner("200", "5000"), L.OWNER_HOST: "elsewhere"})
    unlabelled = add(engine, {})
    lines: list[str] = []
    removed = reaper.reap_dead_owner_containers(engine, proc=tmp_path, report=lines.append)  # type: ignore[arg-type]
    assert sorted(removed) == sorted([reused, gone])
    assert {c.short_id for c in engine.containers_} == {live, other_host, unlabelled}
    assert engine.list_filters[-1] == {"label": [L.SESSION, L.OWNER_PID]}
    assert len(lines) == 2
