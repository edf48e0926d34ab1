"""A rig: N pairs started in parallel (upstream W4), isolated, always torn down completely.

If any pair fails to start, every pair is torn down and one error lists all failures.
Teardown runs all pairs in parallel, each firmware → bridge → emulator, collecting errors.
The session's state file (``harness.runstate``) records every child as it is spawned, so a
SIGKILLed owner is reapable by ``harness down``."""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.emulators.base import EmulatorBackend
from harness.errors import HarnessError, TeardownErrors
from harness.identity import Identity, new_session_id
from harness.pair import Aborted, BridgeFactory, Pair, Progress
from harness.ports import PortAllocator
from harness.runstate import SessionState
from harness.settings import Settings


class HarnessWarning(UserWarning):
    """Something works, but not the way it should on a well-prepared machine."""


class RigStartError(HarnessError):
    """At least one pair failed to start; ``errors`` has every failure (index → error)."""

    def __init__(
        self,
        errors: dict[int, BaseException],
        teardown: TeardownErrors | None = None,
        aborted: list[int] | None = None,
    ) -> None:
        self.aborted = sorted(aborted or [])
        note = f" (pairs {self.aborted} were stopped because of it)" if self.aborted else ""
        if errors:
            parts = [f"{len(errors)} of the rig's pairs failed to start{note}:"]
        else:
            parts = [f"rig start aborted: asked to stop while pairs {self.aborted} were starting"]
        for index, exc in sorted(errors.items()):
            parts.append(f"--- pair {index}: {type(exc).__name__} ---\n{exc}")
        if teardown is not None:
            parts.append(f"--- and teardown: {teardown}")
        super().__init__("\n".join(parts))
        self.errors = errors
        self.teardown = teardown


def make_backend(settings: Settings, state: SessionState, ports: PortAllocator) -> EmulatorBackend:
    """The configured emulator backend; Docker's is imported only when asked for."""
    if settings.emulator_backend == "docker":
        from harness.emulators.docker import DockerBackend

        backend: EmulatorBackend = DockerBackend(image=settings.emulator_image, run_id=state.session)
        return backend
    from harness.emulators.process import ProcessBackend

    return ProcessBackend(
        settings,
        ports=ports,
        on_spawn=lambda key, pid: state.add_child(key, pid, role="emulator", instance=key.split("/")[0]),
        on_exit=state.remove_child,
    )


class Rig:
    """``with Rig(settings, 3) as rig: rig[0].api.get("/status")``."""

    def __init__(
        self,
        settings: Settings,
        n: int,
        *,
        workdir: Path | None = None,
        session: str | None = None,
        progress: Progress | None = None,
        backend: EmulatorBackend | None = None,
        kind: str = "library",
        bridge_factory: BridgeFactory | None = None,
    ) -> None:
        if n < 1:
            raise ValueError(f"a rig needs at least one pair, not {n}")
        self.settings = settings
        self.n = n
        self.session = session or new_session_id()
        self.workdir = workdir
        self._progress = progress
        self._backend = backend
        self._abort = threading.Event()
        self.pairs: list[Pair] = []
        self.state: SessionState | None = None
        self.ports: PortAllocator | None = None
        self.timings: dict[str, float] = {}
        self._closed = False
        self._active_backend: EmulatorBackend | None = None
        self.replacements = 0
        self.kind = kind
        self._bridge_factory = bridge_factory

    # ---- start ------------------------------------------------------------------------

    def start(self, *, wait_link: bool = True) -> Rig:
        """Start every pair in parallel; ``wait_link=False`` returns once each firmware answers
        HTTP (``wait_evse_link()`` then finishes readiness)."""
        t0 = time.monotonic()
        self.settings.check()
        if self.settings.bridge == "auto" and self.settings.resolved_bridge() == "python":
            message = "socat not found: using the built-in Python bridge (apt-get install socat)"
            warnings.warn(message, HarnessWarning, stacklevel=2)
            if self._progress is not None:
                self._progress(f"warning: {message}")
        self.state = SessionState(self.settings.run_root, self.session, argv=list(sys.argv), kind=self.kind)
        self.ports = PortAllocator(
            self.settings.port_lock_dir,
            base=self.settings.port_base,
            block=self.settings.port_block,
            worker=self.settings.worker_index,
        )
        try:
            backend = self._backend or make_backend(self.settings, self.state, self.ports)
            backend.check()
        except BaseException:
            self.state.remove()
            raise
        self._active_backend = backend
        self.pairs = [self._make_pair(i, backend) for i in range(self.n)]
        errors: dict[int, BaseException] = {}
        aborted: list[int] = []
        with ThreadPoolExecutor(max_workers=self.n, thread_name_prefix=f"rig-{self.session}") as pool:
            futures = {pool.submit(pair.start, wait_link=wait_link): pair.index for pair in self.pairs}
            try:
                for fut, index in futures.items():
                    exc = fut.exception()
                    if isinstance(exc, Aborted):
                        aborted.append(index)
                    elif exc is not None:
                        errors[index] = exc
                        self._abort.set()  # the others stop waiting at their next poll
            except BaseException:
                # Interrupted here (pytest-timeout, Ctrl-C): pairs still starting give up at
                # once; the caller's close() then stops whatever did start.
                self._abort.set()
                raise
        if errors or aborted:
            teardown: TeardownErrors | None = None
            try:
                self.close()
            except TeardownErrors as exc:
                teardown = exc
            raise RigStartError(errors, teardown, aborted)
        self.timings["start"] = time.monotonic() - t0
        return self

    def _make_pair(self, index: int, backend: EmulatorBackend, identity: Identity | None = None) -> Pair:
        assert self.state is not None
        assert self.ports is not None
        # A replacement pair gets its own dirs (and identity): nothing of the old one carries over.
        slot = f"i{index}" if identity is None else f"i{index}-{identity.session}"
        link_dir = self.state.dir / slot
        instance_dir = (self.workdir / slot) if self.workdir is not None else link_dir
        return Pair(
            settings=self.settings,
            identity=identity or Identity(self.session, index),
            backend=backend,
            state=self.state,
            ports=self.ports,
            instance_dir=instance_dir,
            link_dir=link_dir,
            abort=self._abort,
            progress=self._progress,
            bridge_factory=self._bridge_factory,
        )

    def abort(self) -> None:
        """Ask pairs still starting to give up at their next poll (signal-handler safe)."""
        self._abort.set()

    # ---- stop -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every pair in parallel; remove the session dir once all stopped cleanly.

        Raises ``TeardownErrors`` with everything that went wrong (the state file then stays,
        listing what is left, for ``harness down``)."""
        if self._closed:
            return
        self._closed = True
        self._abort.set()
        t0 = time.monotonic()
        errors: list[BaseException] = []
        if self.pairs:
            with ThreadPoolExecutor(max_workers=len(self.pairs)) as pool:
                for fut in [pool.submit(p.stop) for p in self.pairs]:
                    if (exc := fut.exception()) is not None:
                        errors.extend(exc.errors if isinstance(exc, TeardownErrors) else [exc])
        if self.state is not None:
            leftover = self.state.data.get("children") or self.state.data.get("containers")
            if not errors and not leftover:
                self.state.remove()
        self.timings["stop"] = time.monotonic() - t0
        if errors:
            raise TeardownErrors(errors)

    def kill(self) -> None:
        """SIGKILL every child at once (second Ctrl-C); the state file stays for a reap."""
        self._abort.set()
        for pair in self.pairs:
            pair.kill()

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- members ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __getitem__(self, index: int) -> Pair:
        return self.pairs[index]

    def wait_evse_link(self) -> None:
        """Wait for every pair's EVSE link in parallel (after ``start(wait_link=False)``)."""
        with ThreadPoolExecutor(max_workers=len(self.pairs) or 1) as pool:
            for fut in [pool.submit(p.wait_evse_link) for p in self.pairs]:
                fut.result()

    def replace_pair(self, index: int) -> Pair:
        """Stop pair ``index`` and start a brand-new one in its slot (new identity, new dirs,
        new ports); returns it once fully ready. Raises ``TeardownErrors`` if the old pair did
        not stop cleanly (the new one is not started then) or the new one's start error."""
        if self._active_backend is None or self._closed:
            raise HarnessError("replace_pair: the rig is not started")
        old = self.pairs[index]
        old.stop()
        self.replacements += 1
        identity = Identity(new_session_id(), index)
        pair = self._make_pair(index, self._active_backend, identity)
        self.pairs[index] = pair
        pair.start()
        return pair

    def restart_firmware(self, index: int) -> Pair:
        self.pairs[index].restart_firmware()
        return self.pairs[index]

    def stop_member(self, index: int) -> None:
        """Stop one firmware (fault tests); its emulator and bridge stay up."""
        self.pairs[index].stop_firmware()

    def start_member(self, index: int) -> Pair:
        """Start a stopped firmware again; returns once it is fully ready."""
        self.pairs[index].start_firmware()
        return self.pairs[index]

    def problems(self) -> list[str]:
        """Parts that died after the rig was ready (for `harness up` to report)."""
        found = []
        for pair in self.pairs:
            for label, part in (
                ("firmware", pair.firmware),
                ("bridge", pair.bridge),
                ("emulator", pair.emulator),
            ):
                if part is not None and (death := part.alive()) is not None:
                    found.append(f"{pair.name} {label}: {death}")
        return found

    def describe(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.pairs]

    def summary(self) -> dict[str, Any]:
        """One JSON-able document: what `harness up --json` prints."""
        assert self.state is not None
        return {
            "session": self.session,
            "owner_pid": os.getpid(),
            "run_dir": str(self.state.dir),
            "state_file": str(self.state.path),
            "firmware": self.settings.firmware_description(),
            "stand_in": self.settings.is_stand_in,
            "emulator": self.settings.emulator_description(),
            "bridge": self.settings.resolved_bridge(),
            "start_seconds": round(self.timings.get("start", 0.0), 3),
            "instances": self.describe(),
        }

    def log_paths(self) -> dict[str, Path]:
        """`<name> <part>` → log file, for failure reports."""
        return {f"{p.name} {part}": path for p in self.pairs for part, path in p.logs.items()}


Factory = Callable[[int], Rig]
