"""The one way the harness waits: poll a check with backoff until it holds or a deadline.

Monotonic and injectable (clock, sleep), so unit tests run without sleeping; fail fast
when the awaited process dies; errors carry instance, stage, elapsed, attempts, last error
and the log tail (engineering.md §2.c)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from harness.errors import ProcessDied, ReadinessTimeout

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Backoff:
    """Delay between attempts: grows by ``factor`` from ``initial`` up to ``cap``, with jitter."""

    initial: float = 0.02
    factor: float = 1.5
    cap: float = 0.5
    jitter: float = 0.2

    def delays(self) -> Callable[[], float]:
        current = self.initial

        def next_delay() -> float:
            nonlocal current
            value = current * random.uniform(1 - self.jitter, 1 + self.jitter)
            current = min(self.cap, current * self.factor)
            return value

        return next_delay


class NotYet(Exception):
    """Raised by a check to say "not yet" with a reason that becomes the last error."""


# Exceptions a check may raise that mean "try again"; anything else propagates at once.
TRANSIENT: tuple[type[BaseException], ...] = (NotYet, OSError, TimeoutError, ValueError)


def wait_until(
    check: Callable[[float], T | None],
    *,
    instance: str,
    what: str,
    timeout: float,
    alive: Callable[[], str | None] | None = None,
    log_tail: Callable[[], str] | None = None,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
    backoff: Backoff = Backoff(),
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> T:
    """Call ``check(remaining_seconds)`` until it returns something other than None/False.

    ``alive()`` returns None while the awaited process lives, else a description of its
    exit; then ``ProcessDied`` is raised at once. Returns what the check returned.
    """
    start = clock()
    next_delay = backoff.delays()
    attempts = 0
    last_error: str | None = None
    while True:
        if alive is not None and (death := alive()) is not None:
            elapsed = clock() - start
            raise ProcessDied(
                f"{what}: process exited ({death}) after {elapsed:.2f}s of waiting; last error: {last_error}",
                instance=instance,
                what=what,
                elapsed=elapsed,
                attempts=attempts,
                last_error=last_error,
                log_tail=log_tail() if log_tail else None,
            )
        attempts += 1
        remaining = timeout - (clock() - start)
        try:
            result = check(max(0.05, remaining))
        except transient as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            if result is not None and result is not False:
                return result
            last_error = last_error or "condition not met"
        elapsed = clock() - start
        remaining = timeout - elapsed
        if remaining <= 0:
            raise ReadinessTimeout(
                f"{what}: not ready after {elapsed:.2f}s ({attempts} attempts, deadline {timeout:.1f}s); "
                f"last error: {last_error}",
                instance=instance,
                what=what,
                elapsed=elapsed,
                attempts=attempts,
                last_error=last_error,
                log_tail=log_tail() if log_tail else None,
            )
        sleep(min(remaining, next_delay()))


def tail(path: object, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a text file (bounded read), or a note when it is absent."""
    from pathlib import Path

    p = Path(str(path))
    try:
        with p.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError as exc:
        return f"(no log at {p}: {exc.strerror})"
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
