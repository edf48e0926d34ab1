"""One pair: emulator + serial bridge + firmware, started in that order and stopped in reverse
(firmware → bridge → emulator, upstream W7), always completely.

Also answers the upstream fixture's dict keys (upstream-harness.md A2), so ported tests
keep working: ``pair["native_url"]``, ``["emulator_url"]``, ``["native_port"]``,
``["emulator_port"]``, ``["pty_path"]``, ``["restart_native"]``, ``["native_process"]``,
``["emulator_container"]``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from harness.bridge import SerialBridge, SocatBridge
from harness.emulators.base import EmulatorBackend, EmulatorHandle, EmulatorSpec
from harness.errors import HarnessError, ProcessDied, TeardownErrors
from harness.fault_bridge import FaultBridge
from harness.faults import FaultError
from harness.firmware import Firmware, PortConflict
from harness.http import Api
from harness.identity import Identity
from harness.ports import PortAllocator, PortLease, looks_like_address_in_use
from harness.runstate import SessionState
from harness.settings import Settings
from harness.trace import SocatDumpTracer, socat_tracer
from harness.waiting import tail

Progress = Callable[[str], None]
# Builds an in-process bridge from (instance, link, rapi_host, rapi_port, log_path, timeout),
# e.g. ``harness.fault_bridge.FaultBridge``; it replaces the configured socat/python bridge.
BridgeFactory = Callable[..., SerialBridge]
T = TypeVar("T")
FIRMWARE_PORT_RETRIES = 3


class Aborted(HarnessError):
    """The rig was asked to stop while this pair was starting."""


class Pair:
    """A started (or starting) emulator, bridge and firmware for instance ``index``."""

    def __init__(
        self,
        *,
        settings: Settings,
        identity: Identity,
        backend: EmulatorBackend,
        state: SessionState,
        ports: PortAllocator,
        instance_dir: Path,
        link_dir: Path,
        abort: threading.Event | None = None,
        progress: Progress | None = None,
        bridge_factory: BridgeFactory | None = None,
    ) -> None:
        self.settings = settings
        self._bridge_factory = bridge_factory
        self.identity = identity
        self.index = identity.index
        self.name = identity.name
        self.hostname = identity.hostname
        self.chip_id = identity.chip_id
        self.long_id = identity.long_id
        self.short_id = identity.short_id
        self.session = identity.session
        self.run_dir = instance_dir
        self.pty_path = link_dir / "rapi.pty"
        self._link_dir = link_dir
        self._backend = backend
        self._state = state
        self._ports = ports
        self._abort = abort or threading.Event()
        self._progress = progress
        self.emulator: EmulatorHandle | None = None
        self.bridge: SerialBridge | None = None
        self.firmware: Firmware | None = None
        self.trace_path = instance_dir / "rapi-trace.jsonl"  # RAPI trace (docs/faults.md)
        self._tracer: SocatDumpTracer | None = None
        self._lease: PortLease | None = None
        self.timings: dict[str, float] = {}
        self.api: Api = Api("http://127.0.0.1:0")
        self.emulator_api: Api = Api("http://127.0.0.1:0")

    # ---- facts ------------------------------------------------------------------------

    @property
    def firmware_port(self) -> int:
        return self._need(self.firmware, "firmware").http_port

    @property
    def firmware_url(self) -> str:
        return f"http://127.0.0.1:{self.firmware_port}"

    @property
    def emulator_url(self) -> str:
        return self._need(self.emulator, "emulator").web_url

    @property
    def emulator_port(self) -> int:
        return int(self.emulator_url.rsplit(":", 1)[1])

    @property
    def logs(self) -> dict[str, Path]:
        logs = {
            "firmware": self.run_dir / "firmware.log",
            "bridge": self.run_dir / "bridge.log",
            "emulator": self.run_dir / "emulator.log",
            "rapi-trace": self.trace_path,
        }
        if self.emulator is not None:
            logs["emulator"] = self.emulator.log_path
        return logs

    def _need(self, part: T | None, what: str) -> T:
        if part is None:
            raise HarnessError(f"[{self.name}] {what} is not started")
        return part

    def _say(self, text: str) -> None:
        if self._progress is not None:
            self._progress(f"{self.name}: {text}")

    def _alive(self) -> str | None:
        """Fail-fast probe for the firmware stages: any part of the pair gone, or an abort
        (raised as ``Aborted``, so the rig can tell a real failure from a consequential stop)."""
        self._check_abort()
        for label, part in (
            ("firmware", self.firmware),
            ("bridge", self.bridge),
            ("emulator", self.emulator),
        ):
            if part is not None and (death := part.alive()) is not None:
                return f"{label}: {death}"
        return None

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise Aborted(f"[{self.name}] start aborted: the rig is stopping")

    # ---- start ------------------------------------------------------------------------

    def start(self, *, wait_link: bool = True) -> Pair:
        """Emulator, bridge, firmware HTTP, then (unless ``wait_link`` is false) the EVSE link;
        without it, ``wait_evse_link()`` finishes the readiness later."""
        t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._link_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._check_abort()
        spec = EmulatorSpec(
            instance=self.name,
            index=self.index,
            session=self.session,
            run_dir=self.run_dir,
            labels={"io.openevse-harness.instance": str(self.index)},
            trace_path=self.run_dir / "emulator-trace.jsonl",  # ours is rapi-trace.jsonl
            startup_timeout=self.settings.emulator_timeout,
        )
        self.emulator = self._backend.start(spec)
        if hasattr(self.emulator, "stop_guard"):
            self.emulator.stop_guard = self._emulator_stop_guard
        if hasattr(self.emulator, "on_replaced"):  # docker: resume() after a fault
            self.emulator.on_replaced = self._emulator_replaced
        container = getattr(self.emulator, "container", None)
        if container is not None:
            self._state.add_container(str(container.id))
        self.emulator_api = Api(self.emulator.web_url)
        self.timings["emulator"] = time.monotonic() - t0
        self._say(f"emulator ready at {self.emulator.web_url} ({self.emulator.describe()})")
        self._check_abort()

        self.bridge = self._make_bridge(self.emulator)
        self._state.add_link(self.pty_path)
        self.bridge.start()
        self.timings["bridge"] = time.monotonic() - t0
        self._check_abort()

        self._lease = self._ports.acquire()
        self.firmware = self._make_firmware(self._lease.port)
        self.api = Api(self.firmware.url)
        self._start_firmware(new_port_on_conflict=True, wait_link=wait_link)
        self.timings["ready"] = time.monotonic() - t0
        self._record()
        link = "EVSE link up" if wait_link else "EVSE link not awaited"
        self._say(f"ready: firmware {self.firmware_url}, {link} ({self.timings['ready']:.2f}s)")
        return self

    def _make_bridge(self, emulator: EmulatorHandle) -> SerialBridge:
        kind = self.settings.resolved_bridge()
        common: dict[str, Any] = {
            "instance": self.name,
            "link": self.pty_path,
            "rapi_host": emulator.rapi_host,
            "rapi_port": emulator.rapi_port,
            "log_path": self.run_dir / "bridge.log",
            "timeout": self.settings.bridge_timeout,
        }
        if self._bridge_factory is not None:
            return self._bridge_factory(**common)
        if kind == "socat":
            key = f"{self.name}/bridge"
            # socat -x dumps every transfer into bridge.log; the tracer turns it into the trace.
            self._tracer = socat_tracer(self.run_dir / "bridge.log", self.trace_path).start()
            return SocatBridge(
                **common,
                on_spawn=lambda pid: self._state.add_child(key, pid, role="bridge", instance=self.name),
                on_exit=lambda: self._state.remove_child(key),
            )
        return FaultBridge(**common, trace_path=self.trace_path)

    @property
    def serial(self) -> FaultBridge:
        """The faultable serial link (docs/faults.md): ``with pair.serial.fault(delay_ms=600):``."""
        if not isinstance(self.bridge, FaultBridge):
            raise FaultError(
                f"[{self.name}] serial-link faults need the python bridge, this pair uses "
                f"{self.bridge.kind if self.bridge else 'none'}: set HARNESS_BRIDGE=python"
            )
        return self.bridge

    def _emulator_stop_guard(self) -> None:
        """socat exits when the emulator closes the TCP side, and its restart makes a new PTY
        the firmware never opens (it opens its RAPI port once, firmware.md §5.4): the pair
        would be left dead. Only the python bridge keeps the PTY across the outage."""
        if self.bridge is not None and not isinstance(self.bridge, FaultBridge):
            raise FaultError(
                f"[{self.name}] stopping the emulator needs the python bridge, this pair uses "
                f"{self.bridge.kind} (socat ends with the TCP connection; its new PTY is one the "
                "firmware never opens): set HARNESS_BRIDGE=python, or use pair.emulator.reboot()"
            )

    def _emulator_replaced(self, old_id: str, new_id: str) -> None:
        """A new container took over after a fault: `harness down` and the reaper must know."""
        self._state.add_container(new_id)
        self._state.remove_container(old_id)

    def _make_firmware(self, port: int) -> Firmware:
        key = f"{self.name}/firmware"
        extra: dict[str, str] = {}
        if self.settings.mdns_interfaces is not None:
            extra["OPENEVSE_SIM_MDNS_INTERFACES"] = ",".join(self.settings.mdns_interfaces)
        if self.settings.is_stand_in:
            # Every rig on this machine shares the loopback mDNS domain: far more units than a
            # LAN, from unrelated runs. The real query keeps only 20 results (firmware.md §2.2),
            # so with that cap a unit could miss its own rig's peers because of someone else's
            # run. A real build's mDNS runs where the user put it, which the harness does not touch.
            extra["OPENEVSE_SIM_MAX_RESULTS"] = "1000"
        fw = Firmware(
            instance=self.name,
            argv=self.settings.firmware_argv,
            pty_path=self.pty_path,
            http_port=port,
            hostname=self.hostname,
            chip_id=self.chip_id,
            cwd=self.run_dir / "fw",
            log_path=self.run_dir / "firmware.log",
            extra_env=extra,
            on_spawn=lambda pid: self._state.add_child(key, pid, role="firmware", instance=self.name),
            on_exit=lambda: self._state.remove_child(key),
        )
        fw.restart_hook = self.start_firmware  # pair.firmware.stopped() (docs/faults.md)
        return fw

    def _start_firmware(self, *, new_port_on_conflict: bool, wait_link: bool = True) -> None:
        """Spawn and wait through the stages; a port taken after our probe is retried."""
        fw = self._need(self.firmware, "firmware")
        for attempt in range(1, FIRMWARE_PORT_RETRIES + 1):
            fw.start()
            try:
                fw.wait_http(self.settings.firmware_http_timeout, alive=self._alive)
                break
            except (ProcessDied, PortConflict) as exc:
                taken = isinstance(exc, PortConflict) or looks_like_address_in_use(exc.log_tail or "")
                if attempt == FIRMWARE_PORT_RETRIES or not taken:
                    raise
                self._say(f"port {fw.http_port} was taken; retrying")
                fw.stop()
                self._need(self.bridge, "bridge").recycle()
                if new_port_on_conflict and self._lease is not None:
                    old = self._lease
                    self._lease = self._ports.acquire(avoid={old.port})
                    old.release()
                    fw.http_port = self._lease.port
                    self.api = Api(fw.url)
        self._say(f"firmware HTTP up at {fw.url}")
        if not wait_link:
            return
        fw.wait_evse_link(self.settings.evse_link_timeout, alive=self._alive, log_tail=self.log_tails)

    def log_tails(self, lines: int = 40) -> str:
        """The firmware's log tail followed by shorter tails of the bridge's and emulator's."""
        parts = []
        for name, path in self.logs.items():
            n = lines if name == "firmware" else max(5, lines // 4)
            parts.append(f"[{name}: {path}]\n{tail(path, n)}")
        return "\n".join(parts)

    def _record(self) -> None:
        self._state.set_instance(self.index, self.describe())

    # ---- operations -------------------------------------------------------------------

    def wait_evse_link(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the firmware reports `/status.state != 0`; returns that status."""
        fw = self._need(self.firmware, "firmware")
        return fw.wait_evse_link(
            timeout or self.settings.evse_link_timeout, alive=self._alive, log_tail=self.log_tails
        )

    def stop_firmware(self) -> None:
        """Firmware only (fault tests); the bridge and emulator stay up."""
        self._need(self.firmware, "firmware").stop()

    def start_firmware(self) -> None:
        """Start the firmware again in the same cwd and port; waits for full readiness."""
        self._need(self.bridge, "bridge").recycle()
        self._start_firmware(new_port_on_conflict=False)
        self._record()

    def restart_firmware(self) -> Firmware:
        """Stop, start in the same cwd, wait for HTTP and the EVSE link (fixes upstream W8)."""
        self.stop_firmware()
        self.start_firmware()
        return self._need(self.firmware, "firmware")

    # ---- stop -------------------------------------------------------------------------

    def stop(self) -> None:
        """Firmware → bridge → emulator; every step runs even when an earlier one fails."""
        errors: list[BaseException] = []
        failed: set[str] = set()
        steps: list[tuple[str, Callable[[], None] | None]] = [
            ("firmware", self.firmware.stop if self.firmware else None),
            ("bridge", self.bridge.stop if self.bridge else None),
            ("trace", self._tracer.stop if self._tracer else None),
            ("emulator", self.emulator.stop if self.emulator else None),
        ]
        for label, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception as exc:
                exc.add_note(f"while stopping the {label} of {self.name}")
                errors.append(exc)
                failed.add(label)
        container = getattr(self.emulator, "container", None)
        if container is not None and "emulator" not in failed:
            self._state.remove_container(str(container.id))
        if self._lease is not None:
            self._lease.release()
        self.api.close()
        self.emulator_api.close()
        if errors:
            raise TeardownErrors(errors)

    def kill(self) -> None:
        """SIGKILL everything at once (a second Ctrl-C); no waiting, no errors."""
        for part in (self.firmware, self.bridge, self.emulator):
            kill = getattr(part, "kill", None)
            if kill is not None:
                try:
                    kill()
                except Exception:  # noqa: S112 - best effort by design
                    continue

    # ---- description and upstream compatibility ---------------------------------------

    def pids(self) -> dict[str, int | None]:
        emulator_pid = getattr(self.emulator, "pid", None)
        return {
            "firmware": self.firmware.pid if self.firmware else None,
            "bridge": self.bridge.pid() if self.bridge else None,
            "emulator": emulator_pid if isinstance(emulator_pid, int) else None,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "hostname": self.hostname,
            "chip_id": f"0x{self.chip_id:016X}",
            "long_id": self.long_id,
            "short_id": self.short_id,
            "session": self.session,
            "firmware_url": self.firmware_url if self.firmware else None,
            "firmware_port": self.firmware_port if self.firmware else None,
            "emulator_url": self.emulator_url if self.emulator else None,
            "emulator_port": self.emulator_port if self.emulator else None,
            "emulator": self.emulator.describe() if self.emulator else None,
            "bridge": self.bridge.kind if self.bridge else None,
            "pty_path": str(self.pty_path),
            "run_dir": str(self.run_dir),
            "logs": {k: str(v) for k, v in self.logs.items()},
            "pids": self.pids(),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    _COMPAT: dict[str, Callable[[Pair], Any]] = {
        "native_url": lambda p: p.firmware_url,
        "emulator_url": lambda p: p.emulator_url,
        "native_port": lambda p: p.firmware_port,
        "emulator_port": lambda p: p.emulator_port,
        "pty_path": lambda p: str(p.pty_path),
        "restart_native": lambda p: lambda: p.restart_firmware().proc,
        "native_process": lambda p: p.firmware.proc if p.firmware else None,
        "emulator_container": lambda p: getattr(p.emulator, "container", None),
    }

    def __getitem__(self, key: str) -> Any:
        try:
            getter = self._COMPAT[key]
        except KeyError:
            raise KeyError(f"{key!r}: upstream keys are {', '.join(self._COMPAT)}") from None
        return getter(self)

    def keys(self) -> list[str]:
        return list(self._COMPAT)

    def __contains__(self, key: object) -> bool:
        return key in self._COMPAT

    def __iter__(self) -> Iterator[str]:
        return iter(self._COMPAT)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._COMPAT else default

    def __enter__(self) -> Pair:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Pair({self.name!r}, firmware={self.firmware.url if self.firmware else None})"
