"""Errors a person can act on: each names the instance, what was awaited, for how long,
the last error seen, and the tail of the relevant log."""

from __future__ import annotations


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose."""


class PrerequisiteMissing(HarnessError):
    """Something the run needs is absent (a binary, socat, a Docker engine, an image).

    ``fix`` says what to do about it."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what}\n  fix: {fix}")
        self.what = what
        self.fix = fix


class WaitError(HarnessError):
    """A wait ended without its condition: see ``ReadinessTimeout`` and ``ProcessDied``."""

    def __init__(
        self,
        message: str,
        *,
        instance: str,
        what: str,
        elapsed: float,
        attempts: int,
        last_error: str | None,
        log_tail: str | None,
    ) -> None:
        text = f"[{instance}] {message}"
        if log_tail:
            text += f"\n--- last lines of the log ---\n{log_tail.rstrip()}\n--- end of log ---"
        super().__init__(text)
        self.instance = instance
        self.what = what
        self.elapsed = elapsed
        self.attempts = attempts
        self.last_error = last_error
        self.log_tail = log_tail


class ReadinessTimeout(WaitError, TimeoutError):
    """The deadline passed before the condition held."""


class ProcessDied(WaitError):
    """The process we were waiting on exited first (fail fast, do not burn the deadline)."""


class TeardownErrors(HarnessError):
    """Teardown went on past failures; this collects them all."""

    def __init__(self, errors: list[BaseException]) -> None:
        lines = "\n".join(f"  - {type(e).__name__}: {e}" for e in errors)
        super().__init__(f"{len(errors)} error(s) during teardown:\n{lines}")
        self.errors = errors
