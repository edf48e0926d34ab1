"""wait_until with a fake clock: backoff, fail-fast, and what its errors say."""

from __future__ import annotations

import pytest

from harness.errors import ProcessDied, ReadinessTimeout
from harness.waiting import Backoff, NotYet, wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_checks_result_once_it_holds() -> None:
    clock = FakeClock()
    calls = iter([None, None, {"state": 1}])
    result = wait_until(
        lambda _r: next(calls), instance="evse-x-0", what="link", timeout=5, clock=clock, sleep=clock.sleep
    )
    assert result == {"state": 1}
    assert len(clock.sleeps) == 2


def test_backoff_grows_and_is_capped() -> None:
    clock = FakeClock()
    with pytest.raises(ReadinessTimeout):
        wait_until(
            lambda _r: None,
            instance="i",
            what="w",
            timeout=10,
            backoff=Backoff(initial=0.1, factor=2, cap=0.8, jitter=0),
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.8])
    assert max(clock.sleeps) <= 0.8
    assert clock.now - 100.0 == pytest.approx(10.0)  # the last sleep is cut to the deadline


def test_timeout_error_names_instance_stage_elapsed_last_error_and_log_tail() -> None:
    clock = FakeClock()

    def check(_r: float) -> None:
        raise NotYet("/status.state is 0")

    with pytest.raises(ReadinessTimeout) as info:
        wait_until(
            check,
            instance="evse-ab12cd-1",
            what="EVSE link",
            timeout=3,
            log_tail=lambda: "line one\nServer started",
            clock=clock,
            sleep=clock.sleep,
        )
    err = info.value
    text = str(err)
    assert "[evse-ab12cd-1]" in text
    assert "EVSE link" in text
    assert "3.00s" in text
    assert "/status.state is 0" in text
    assert "Server started" in text
    assert err.elapsed == pytest.approx(3.0)
    assert err.attempts == len(clock.sleeps) + 1
    assert isinstance(err, TimeoutError)


def test_a_dead_process_fails_fast_without_burning_the_deadline() -> None:
    clock = FakeClock()
    states = iter([None, None, "exit code 3"])

    with pytest.raises(ProcessDied) as info:
        wait_until(
            lambda _r: None,
            instance="evse-x-2",
            what="firmware HTTP",
            timeout=60,
            alive=lambda: next(states),
            log_tail=lambda: "fatal: cannot open PTY",
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now - 100.0 < 1.0
    assert "exit code 3" in str(info.value)
    assert "cannot open PTY" in str(info.value)
    assert info.value.instance == "evse-x-2"


def test_unexpected_exceptions_propagate_at_once() -> None:
    clock = FakeClock()

    def check(_r: float) -> None:
        raise KeyError("bug in the check")

    with pytest.raises(KeyError):
        wait_until(check, instance="i", what="w", timeout=5, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def test_check_gets_the_remaining_time() -> None:
    clock = FakeClock()
    seen: list[float] = []

    def check(remaining: float) -> bool:
        seen.append(remaining)
        return len(seen) == 3

    wait_until(
        check,
        instance="i",
        what="w",
        timeout=2,
        backoff=Backoff(initial=0.5, factor=1, cap=0.5, jitter=0),
        clock=clock,
        sleep=clock.sleep,
    )
    assert seen == pytest.approx([2.0, 1.5, 1.0])
