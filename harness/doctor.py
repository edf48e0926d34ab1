"""`harness doctor`: every prerequisite, checked the way a run would use it, with a fix each.

Required items (exit 1 when missing) depend on the configuration: socat only when
HARNESS_BRIDGE=socat, Docker only when HARNESS_EMULATOR=docker; the rest are advisories."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from harness.errors import HarnessError, PrerequisiteMissing
from harness.ports import PortAllocator
from harness.runstate import ensure_private_dir
from harness.settings import Settings, check_firmware_runs


@dataclass
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _firmware(settings: Settings) -> Finding:
    try:
        check_firmware_runs(settings.firmware_argv, settings.is_stand_in)
    except PrerequisiteMissing as exc:
        return Finding("firmware", False, exc.what, exc.fix)
    return Finding("firmware", True, settings.firmware_description(), required=True)


def _emulator(settings: Settings) -> Finding:
    if settings.emulator_backend != "process":
        return Finding("emulator process", True, "not used (docker backend)", required=False)
    try:
        proc = subprocess.run(
            [*settings.emulator_argv, "--help"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding("emulator process", False, str(exc), "fix HARNESS_EMULATOR_CMD or unset it")
    if proc.returncode != 0:
        return Finding(
            "emulator process",
            False,
            f"`--help` exited {proc.returncode}",
            "fix HARNESS_EMULATOR_CMD or unset it",
        )
    return Finding("emulator process", True, settings.emulator_description())


def _socat(settings: Settings) -> Finding:
    path = shutil.which("socat")
    required = settings.bridge == "socat"
    if path:
        return Finding("socat", True, path, required=required)
    return Finding(
        "socat",
        False,
        "not on PATH" + ("" if required else "; the built-in Python bridge will be used"),
        "apt-get install socat",
        required=required,
    )


def _docker(settings: Settings) -> list[Finding]:
    required = settings.emulator_backend == "docker"
    try:
        from harness.emulators.docker import DockerBackend
    except ImportError as exc:
        return [Finding("docker", False, f"backend not importable: {exc}", "pip install docker", required)]
    backend = DockerBackend(image=settings.emulator_image)
    try:
        backend.client()
    except HarnessError as exc:
        fix = exc.fix if isinstance(exc, PrerequisiteMissing) else "start dockerd (scripts/start-dockerd)"
        return [Finding("docker engine", False, str(exc).splitlines()[0], fix, required)]
    found = [Finding("docker engine", True, "answers", required=required)]
    try:
        backend.check()
    except HarnessError as exc:
        fix = exc.fix if isinstance(exc, PrerequisiteMissing) else "harness image build"
        found.append(Finding("docker image", False, str(exc).splitlines()[0], fix, required))
    else:
        found.append(Finding("docker image", True, backend.image, required=required))
    return found


def _mdns() -> list[Finding]:
    avahi = shutil.which("avahi-daemon")
    ip = shutil.which("ip")
    root = os.geteuid() == 0
    if avahi:
        running = subprocess.run(
            [avahi, "--check"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False
        )
        daemon = Finding(
            "avahi-daemon",
            running.returncode == 0,
            f"{avahi}: {'running' if running.returncode == 0 else 'installed but not running'}",
            "start dbus and avahi-daemon (a real build's mDNS fails silently without them, upstream W12)",
            required=False,
        )
    else:
        daemon = Finding(
            "avahi-daemon",
            False,
            "not installed (a real firmware build advertises through Avahi)",
            "apt-get install avahi-daemon dbus",
            required=False,
        )
    return [
        daemon,
        Finding(
            "network namespaces",
            bool(ip) and root,
            "ip + root available" if ip and root else f"ip={ip or 'missing'}, root={root}",
            "run as root (or with CAP_SYS_ADMIN) and apt-get install iproute2",
            required=False,
        ),
    ]


def _ports(settings: Settings) -> Finding:
    try:
        alloc = PortAllocator(settings.port_lock_dir, base=settings.port_base, block=settings.port_block)
        leases = [alloc.acquire() for _ in range(8)]
    except (HarnessError, OSError) as exc:
        return Finding("free ports", False, str(exc), "free ports in 20000-32767 or set HARNESS_RUN_DIR")
    ports = [lease.port for lease in leases]
    for lease in leases:
        lease.release()
    return Finding("free ports", True, f"8 free from {ports[0]} (e.g. {ports})")


def _run_dir(settings: Settings) -> Finding:
    try:
        ensure_private_dir(settings.run_root)
    except (HarnessError, OSError) as exc:
        return Finding("run dir", False, str(exc), "set HARNESS_RUN_DIR to a private writable directory")
    return Finding("run dir", True, f"{settings.run_root} (0700)")


def collect(settings: Settings) -> list[Finding]:
    checks: list[Callable[[], Finding | list[Finding]]] = [
        lambda: _run_dir(settings),
        lambda: _firmware(settings),
        lambda: _emulator(settings),
        lambda: _socat(settings),
        lambda: _docker(settings),
        _mdns,
        lambda: _ports(settings),
    ]
    found: list[Finding] = []
    for check in checks:
        result = check()
        found.extend(result if isinstance(result, list) else [result])
    return found


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")


def run_doctor(verbose: bool = True, settings: Settings | None = None) -> int:
    try:
        settings = settings or Settings.from_env()
    except PrerequisiteMissing as exc:
        _say(f"[FAIL] settings: {exc.what}\n       fix: {exc.fix}")
        return 1
    findings = collect(settings)
    for f in findings:
        mark = "ok  " if f.ok else ("FAIL" if f.required else "warn")
        _say(f"[{mark}] {f.name}: {f.detail}")
        if not f.ok and f.fix:
            _say(f"       fix: {f.fix}")
    missing = [f for f in findings if f.required and not f.ok]
    _say(f"{'all required prerequisites present' if not missing else f'{len(missing)} required missing'}")
    sys.stdout.flush()
    return 1 if missing else 0
