"""The pure parts of the measurements: stage split, convergence check, pytest output parsing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.measure import (
    LogWatcher,
    ProgressClock,
    RigSample,
    _deaths,
    _start_interruptibly,
    _wrap_stop,
    detection_lags,
    failed_tests,
    measure_convergence,
    parse_durations,
    parse_pytest_summary,
    peers_converged,
    stage_split,
)


def test_stage_split_uses_the_http_stamp_relative_to_the_pair_start() -> None:
    timings = {"emulator": 0.10, "bridge": 0.13, "ready": 0.50}
    # the pair started at t=100.0: "emulator ready" said at 100.10, "firmware HTTP up" at 100.40
    split = stage_split(timings, emulator_said=100.10, http_said=100.40)
    assert split == pytest.approx(
        {"emulator": 0.10, "bridge": 0.03, "firmware": 0.27, "evse_link": 0.10, "pair_ready": 0.50}
    )
    assert sum(split[s] for s in ("emulator", "bridge", "firmware", "evse_link")) == pytest.approx(0.50)


def test_stage_split_without_the_http_stamp_folds_both_firmware_stages() -> None:
    split = stage_split({"emulator": 0.1, "bridge": 0.2, "ready": 0.9}, emulator_said=5.1, http_said=None)
    assert split == pytest.approx({"emulator": 0.1, "bridge": 0.1, "firmware": 0.7, "pair_ready": 0.9})


def test_stage_split_ignores_an_implausible_stamp() -> None:
    split = stage_split({"emulator": 0.1, "bridge": 0.2, "ready": 0.9}, emulator_said=5.1, http_said=99.0)
    assert "evse_link" not in split
    assert split["firmware"] == pytest.approx(0.7)


def test_stage_split_of_an_unfinished_pair_is_empty() -> None:
    assert stage_split({"emulator": 0.1}, emulator_said=1.0, http_said=None) == {}


def test_progress_clock_finds_the_first_matching_message_per_pair() -> None:
    ticks = iter([1.0, 2.0, 3.0])
    clock = ProgressClock(clock=lambda: next(ticks))
    clock("evse-x-0: emulator ready at http://127.0.0.1:1")
    clock("evse-x-1: firmware HTTP up at http://127.0.0.1:2")
    clock("evse-x-0: firmware HTTP up at http://127.0.0.1:3")
    assert clock.first("evse-x-0", "emulator ready") == 1.0
    assert clock.first("evse-x-0", "firmware HTTP up") == 3.0
    assert clock.first("evse-x-10", "firmware HTTP up") is None


def test_peers_converged_needs_every_other_id_online() -> None:
    peers = [
        {"id": "a", "online": True, "isLocal": True},
        {"id": "b", "online": True},
        {"id": "c", "online": False},
    ]
    assert peers_converged(peers, {"b"})
    assert not peers_converged(peers, {"b", "c"})
    assert not peers_converged(peers, {"d"})
    assert not peers_converged({"error": "x"}, {"b"})
    assert peers_converged(peers, set())


@dataclass
class FakeResponse:
    status_code: int
    body: Any = None

    def json(self) -> Any:
        return self.body


@dataclass
class FakeApi:
    """Answers the peers list from a script: call k of GET returns script[min(k, last)]."""

    script: list[list[dict[str, Any]]]
    posts: int = 0
    gets: int = 0

    def post(self, path: str, json: Any = None, **kwargs: Any) -> FakeResponse:
        assert path == "/loadsharing/discover"
        self.posts += 1
        return FakeResponse(200, {"msg": "done"})

    def get(self, path: str, **kwargs: Any) -> FakeResponse:
        assert path == "/loadsharing/peers"
        body = self.script[min(self.gets, len(self.script) - 1)]
        self.gets += 1
        return FakeResponse(200, body)


@dataclass
class FakePair:
    name: str
    long_id: str
    api: FakeApi = field(default_factory=lambda: FakeApi([[]]))


def test_convergence_polls_until_every_unit_sees_the_others() -> None:
    a = FakePair("a", "1", FakeApi([[], [{"id": "2", "online": True}]]))
    b = FakePair("b", "2", FakeApi([[], [], [{"id": "1", "online": True}]]))
    seconds, posted = measure_convergence([a, b], poll=0.001, timeout=5.0)
    assert a.api.posts == b.api.posts == 1
    assert b.api.gets == 3  # converged in the third round
    assert 0.0 <= posted <= seconds


def test_convergence_times_out_naming_the_units_still_short() -> None:
    a = FakePair("a", "1", FakeApi([[{"id": "2", "online": True}]]))
    b = FakePair("b", "2", FakeApi([[{"id": "1", "online": False}]]))
    with pytest.raises(TimeoutError, match="still short: b"):
        measure_convergence([a, b], poll=0.001, timeout=0.05)


def test_wrap_stop_times_the_original_and_keeps_its_result() -> None:
    calls: list[float] = []

    class Part:
        def stop(self, timeout: float = 3.0) -> str:
            calls.append(timeout)
            return "stopped"

    part = Part()
    sink: dict[str, float] = {}
    _wrap_stop(part, "firmware", sink)
    assert part.stop(1.5) == "stopped"
    assert calls == [1.5]
    assert sink["firmware"] >= 0.0


def test_parse_pytest_summary() -> None:
    text = "....F.s\n=== 5 passed, 1 failed, 1 skipped, 2 warnings in 12.34s ===\n"
    assert parse_pytest_summary(text) == {"passed": 5, "failed": 1, "skipped": 1, "warnings": 2}
    assert parse_pytest_summary("1 error in 0.5s") == {"errors": 1}
    assert parse_pytest_summary("no tests ran in 0.01s") == {}
    assert parse_pytest_summary("") == {}
    assert parse_pytest_summary("24 tests collected in 0.66s") == {"collected": 24}
    assert parse_pytest_summary("1 test collected in 0.1s") == {"collected": 1}


def test_parse_durations() -> None:
    text = (
        "============ slowest 8 durations ============\n"
        "3.21s call     tests/integration/test_a.py::test_x[n2]\n"
        "0.50s setup    tests/integration/test_a.py::test_y[n3]\n"
        "(2 durations < 0.005s hidden.)\n"
    )
    assert parse_durations(text) == [
        {"seconds": 3.21, "phase": "call", "test": "tests/integration/test_a.py::test_x[n2]"},
        {"seconds": 0.5, "phase": "setup", "test": "tests/integration/test_a.py::test_y[n3]"},
    ]


def test_rig_sample_is_json_ready() -> None:
    sample = RigSample(n=2, backend="process", ready_s=0.5, stages=[{"emulator": 0.1}])
    data = sample.to_json()
    assert data["n"] == 2
    assert data["stages"] == [{"emulator": 0.1}]
    assert data["error"] is None


def test_failed_tests_lists_the_short_summary_lines() -> None:
    text = "x\nFAILED tests/a.py::t1 - boom\nERROR tests/b.py::t2\n  FAILED not at line start\n"
    assert failed_tests(text) == ["FAILED tests/a.py::t1 - boom", "ERROR tests/b.py::t2"]


class FakeRig:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.started = False
        self.aborted = False

    def start(self) -> FakeRig:
        self.started = True
        if self.error is not None:
            raise self.error
        return self

    def abort(self) -> None:
        self.aborted = True


def test_start_interruptibly_runs_start_and_hands_back_its_error() -> None:
    rig = FakeRig()
    _start_interruptibly(rig)
    assert rig.started
    assert not rig.aborted
    with pytest.raises(RuntimeError, match="boom"):
        _start_interruptibly(FakeRig(RuntimeError("boom")))


def test_deaths_name_the_parts_that_ended() -> None:
    class Part:
        def __init__(self, death: str | None) -> None:
            self.death = death

        def alive(self) -> str | None:
            return self.death

    @dataclass
    class Pair:
        name: str
        firmware: Part | None
        bridge: Part | None
        emulator: Part | None

    rig = [
        Pair("evse-x-0", Part(None), Part(None), Part(None)),
        Pair("evse-x-1", Part("killed by SIGKILL"), None, Part(None)),
    ]
    assert _deaths(rig) == ["evse-x-1 firmware: killed by SIGKILL"]


def test_detection_lags_compare_the_harness_stamps_with_the_logs() -> None:
    timings = {"emulator": 0.20, "bridge": 0.25, "ready": 0.60}
    # pair start at 10.0; emulator ready line seen at 10.15, banner seen at 10.40, HTTP up said at 10.45
    lags = detection_lags(timings, 10.20, 10.45, emulator_seen=10.15, firmware_seen=10.40)
    assert lags == pytest.approx({"lag_emulator": 0.05, "lag_firmware_http": 0.05})
    assert detection_lags(timings, None, 10.45, 10.15, 10.40) == {}
    assert detection_lags(timings, 10.20, None, None, 10.40) == {}


def test_log_watcher_notes_each_line_once(tmp_path: Path) -> None:
    @dataclass
    class Pair:
        name: str
        run_dir: Path

    @dataclass
    class Rig:
        pairs: list[Pair]

    ticks = iter(float(t) for t in range(1, 100))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    watcher = LogWatcher(Rig([Pair("a", a), Pair("b", b)]), clock=lambda: next(ticks))
    (a / "emulator.log").write_text('# harness start\n{"event": "ready", "web_port": 1}\n')
    assert not watcher.scan()
    assert watcher.seen == {("a", "emulator"): 1.0}
    (a / "firmware.log").write_text("booting\nServer started\n")
    (b / "emulator.log").write_text('{"event": "ready"}\n')
    (b / "firmware.log").write_text("Server started\n")
    assert watcher.scan()
    assert watcher.seen[("a", "emulator")] == 1.0  # not stamped again
    assert set(watcher.seen) == {("a", "emulator"), ("a", "firmware"), ("b", "emulator"), ("b", "firmware")}


def test_log_watcher_thread_stops(tmp_path: Path) -> None:
    @dataclass
    class Rig:
        pairs: list[Any]

    watcher = LogWatcher(Rig([]), interval=0.001).start()
    watcher.stop()
    assert watcher.seen == {}
