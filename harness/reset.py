"""A pair's baseline snapshot, its reset to that baseline, and the check that it got there.

Public interfaces only (firmware.md, evse.md §6), so it works on a real build as well:

- ``capture(pair)`` right after a pair is ready: ``GET /config`` minus volatile keys, the
  joined rows of ``GET /loadsharing/peers``, ``GET /override``, ``GET /claims``, the
  relevant fields of the emulator's ``GET /api/status`` and ``/status`` state and vehicle.
  ``capture(pair, link=False)`` takes only the HTTP part (a rig started before its EVSE
  link); ``complete(pair, baseline)`` adds the EVSE part once the link is up.
- ``reset(pair, baseline)``: config first (§4.3: with ``loadsharing_role`` in the body when a
  load-sharing key is restored, so a member's lockout does not refuse it, and so a member can
  delete peers again), then every joined non-local peer deleted (§1.4), override (§7.3) and
  API claims not in the baseline (§7.4) removed, the emulator put back (car unplugged, faults
  cleared, EVSE enabled, current capacity, EV max rate, SoC, service level).
- ``verify(pair, baseline)`` → the differences left, ``[]`` when clean;
  ``reset_and_verify`` resets, then polls ``verify`` until clean or a deadline, re-applying
  the reset while something still differs.

An endpoint answering 301, 404 or 405 (a firmware without ``/override`` or ``/claims``; the
stand-in in AP mode redirects unknown paths) is recorded as unsupported and skipped, not
counted as a failure. Rows that cannot be deleted through the API are not leftovers: mDNS
discovered rows (§2.4) and rows a DELETE left with ``joined: false`` (§1.4) are not compared.
Fault counters of the emulator (``gfci_count`` …) cannot be reset through its API; a test
that raised them leaves a difference, and the pair is then replaced by the caller."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import requests

from harness.errors import HarnessError

UNSUPPORTED_STATUS = frozenset({301, 404, 405})
# Keys of GET /config that change on their own (never compared, never restored).
VOLATILE_CONFIG_KEYS = frozenset({"time", "local_time", "uptime", "free_heap", "espfree"})
# Keys of GET /config that POST /config cannot set (§7.2): compared, never posted.
READ_ONLY_CONFIG_KEYS = frozenset(
    {
        "buildenv",
        "version",
        "wifi_serial",
        "espinfo",
        "espflash",
        "firmware",
        "protocol",
        "evse_serial",
        "min_current_hard",
        "max_current_hard",
    }
)
# Emulator fields compared (evse.md §6 GET /api/status); energy, temperatures, session time
# and the heartbeat (driven by the firmware, §6.2) are measurements, not state.
EMULATOR_FIELDS = (
    "evse.state",
    "evse.current_capacity",
    "evse.service_level",
    "evse.error_flags",
    "evse.gfci_count",
    "evse.no_ground_count",
    "evse.stuck_relay_count",
    "ev.connected",
    "ev.requesting_charge",
    "ev.soc",
    "ev.max_rate_amps",
    "ev.battery_capacity_kwh",
)
# /status as a test sees it right after the reset (``amp`` lags ``state`` by one RAPI cycle
# after an unplug). Not ``pilot``: it is the last current the firmware set or read, 32 at
# boot and ``max_current_soft`` after its first claim evaluation, both clean.
STATUS_FIELDS = ("state", "vehicle", "manual_override", "amp", "max_current")
# Differences no reset can undo through the API (counters only grow; read-only config): no
# point waiting for them to go away.
UNDOABLE_NEVER = (
    "emulator evse.gfci_count",
    "emulator evse.no_ground_count",
    "emulator evse.stuck_relay_count",
    *(f"config {key}:" for key in sorted(READ_ONLY_CONFIG_KEYS)),
)
MANUAL_CLIENT = 65537  # §7.3: the manual override's claim
# Reset requests allow one 5 s discovery stall of a real build (firmware.md §2.3).
REQUEST_TIMEOUT = 10.0
REAPPLY_AFTER = 1.0  # seconds between re-applying a reset while differences remain
# A firmware keeps configuring its EVSE for a moment after the link is up (e.g. ``$SC`` with
# ``max_current_soft``): a baseline is taken once two snapshots SETTLE seconds apart agree.
SETTLE = 0.5
SETTLE_TIMEOUT = 5.0


class Api(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response: ...


class Target(Protocol):
    """What a reset needs of a pair (``harness.pair.Pair`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def api(self) -> Api: ...
    @property
    def emulator_api(self) -> Api: ...


class ResetError(HarnessError):
    """A reset step was refused or could not be carried out."""


@dataclass
class Baseline:
    """One pair's clean state. ``None`` for a part not captured (or not supported)."""

    config: dict[str, Any]
    joined: dict[str, dict[str, Any]]  # host → {id, name, isLocal}
    override: dict[str, Any] | None
    claims: dict[int, dict[str, Any]] | None
    emulator: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    unsupported: set[str] = field(default_factory=set)

    @property
    def linked(self) -> bool:
        return self.emulator is not None and self.status is not None


@dataclass
class Outcome:
    """What ``reset_and_verify`` found and did."""

    ok: bool
    problems: list[str]
    unsupported: set[str]
    rounds: int
    seconds: float


# ---- HTTP ----------------------------------------------------------------------------------


def _call(api: Api, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"timeout": REQUEST_TIMEOUT}
    if body is not None:
        kwargs["json"] = body
    try:
        resp = api.request(method, path, **kwargs)
    except requests.RequestException as exc:
        raise ResetError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
    try:
        data = resp.json()
    except ValueError:
        data = resp.text[:200]
    return resp.status_code, data


def _get(api: Api, path: str) -> Any:
    status, data = _call(api, "GET", path)
    if status != 200:
        raise ResetError(f"GET {path}: HTTP {status}: {str(data)[:200]}")
    return data


def _optional_get(api: Api, path: str, unsupported: set[str]) -> Any | None:
    """GET, or ``None`` (recorded in ``unsupported``) when the firmware does not have it."""
    status, data = _call(api, "GET", path)
    if status in UNSUPPORTED_STATUS:
        unsupported.add(path)
        return None
    if status != 200:
        raise ResetError(f"GET {path}: HTTP {status}: {str(data)[:200]}")
    return data


def _require(api: Api, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
    status, data = _call(api, method, path, body)
    if status not in ok:
        sent = "" if body is None else f" {body}"
        raise ResetError(f"{method} {path}{sent}: HTTP {status}: {str(data)[:200]}")
    return data


# ---- snapshot ------------------------------------------------------------------------------


def _config(api: Api) -> dict[str, Any]:
    data = _get(api, "/config")
    if not isinstance(data, dict):
        raise ResetError(f"GET /config: not an object: {str(data)[:200]}")
    return {k: v for k, v in data.items() if k not in VOLATILE_CONFIG_KEYS}


def _joined(api: Api) -> dict[str, dict[str, Any]]:
    rows = _get(api, "/loadsharing/peers")
    if not isinstance(rows, list):
        raise ResetError(f"GET /loadsharing/peers: not a list: {str(rows)[:200]}")
    return {
        str(r.get("host")): {"id": r.get("id"), "name": r.get("name"), "isLocal": r.get("isLocal")}
        for r in rows
        if isinstance(r, dict) and r.get("joined") is True
    }


def _claims(api: Api, unsupported: set[str]) -> dict[int, dict[str, Any]] | None:
    data = _optional_get(api, "/claims", unsupported)
    if data is None:
        return None
    if not isinstance(data, list):
        raise ResetError(f"GET /claims: not a list: {str(data)[:200]}")
    return {int(c["client"]): c for c in data if isinstance(c, dict) and "client" in c}


def _flat(doc: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in fields:
        node = doc
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out[name] = node
    return out


def _emulator(target: Target) -> dict[str, Any]:
    return _flat(_get(target.emulator_api, "/api/status"), EMULATOR_FIELDS)


def _status(target: Target) -> dict[str, Any]:
    return _flat(_get(target.api, "/status"), STATUS_FIELDS)


def capture(
    target: Target,
    *,
    link: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Baseline:
    """The pair's settled state, taken as its clean baseline (``link=False``: HTTP part only)."""

    def snapshot() -> Baseline:
        unsupported: set[str] = set()
        baseline = Baseline(
            config=_config(target.api),
            joined=_joined(target.api),
            override=_optional_get(target.api, "/override", unsupported),
            claims=_claims(target.api, unsupported),
            unsupported=unsupported,
        )
        if link:
            _add_link_part(target, baseline)
        return baseline

    return _settled(target, snapshot, clock, sleep)


def complete(
    target: Target,
    baseline: Baseline,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Add the EVSE part once the link is up: the emulator, ``/status``, and the config keys
    that appear only once the EVSE answered (§7.2: ``max_current_soft`` …)."""

    def snapshot() -> Baseline:
        copy = Baseline(dict(baseline.config), baseline.joined, baseline.override, baseline.claims)
        _add_link_part(target, copy)
        return copy

    settled = _settled(target, snapshot, clock, sleep)
    baseline.config, baseline.emulator, baseline.status = settled.config, settled.emulator, settled.status


def _add_link_part(target: Target, baseline: Baseline) -> None:
    for key, value in _config(target.api).items():
        baseline.config.setdefault(key, value)
    baseline.emulator = _emulator(target)
    baseline.status = _status(target)


def _settled(
    target: Target,
    snapshot: Callable[[], Baseline],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Baseline:
    """Snapshots SETTLE s apart until two agree (or SETTLE_TIMEOUT: the last one)."""
    start = clock()
    try:
        last = snapshot()
        while True:
            sleep(SETTLE)
            now = snapshot()
            if now == last or clock() - start >= SETTLE_TIMEOUT:
                return now
            last = now
    except ResetError as exc:
        raise ResetError(f"[{target.name}] baseline snapshot: {exc}") from exc


# ---- reset ---------------------------------------------------------------------------------


def config_body(current: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The POST /config body restoring every writable key that differs; with
    ``loadsharing_role`` whenever a load-sharing key is in it (§4.3 member lockout)."""
    body = {
        k: v
        for k, v in baseline.items()
        if k not in READ_ONLY_CONFIG_KEYS and k not in VOLATILE_CONFIG_KEYS and current.get(k, v) != v
    }
    if any(k.startswith("loadsharing_") for k in body) and "loadsharing_role" in baseline:
        body["loadsharing_role"] = baseline["loadsharing_role"]
    return body


def peer_path(host: str) -> str:
    """``/loadsharing/peers/<host>``, percent-encoded (``:`` → ``%3A``, §1.4)."""
    return "/loadsharing/peers/" + quote(host, safe="")


def reset(target: Target, baseline: Baseline) -> None:
    """Apply every reset step once; raises ``ResetError`` naming the pair and the step."""
    api, emu = target.api, target.emulator_api
    step = "config"
    try:
        body = config_body(_config(api), baseline.config)
        if body:
            _require(api, "POST", "/config", body)
        step = "peers"
        for host, row in _joined(api).items():
            if row.get("isLocal") is not True and host not in baseline.joined:
                _require(api, "DELETE", peer_path(host))
        step = "override"
        if baseline.override is not None:
            current = _optional_get(api, "/override", baseline.unsupported)
            if current and current != baseline.override:
                _require(api, "DELETE", "/override")
        step = "claims"
        if baseline.claims is not None:
            claims = _claims(api, baseline.unsupported) or {}
            for client in claims:
                if client not in baseline.claims:
                    _require(api, "DELETE", f"/claims/{client}")
        step = "emulator"
        _reset_emulator(emu, baseline.emulator)
    except ResetError as exc:
        raise ResetError(f"[{target.name}] reset of {step}: {exc}") from exc


def _reset_emulator(emu: Api, base: dict[str, Any] | None) -> None:
    _require(emu, "POST", "/api/ev/disconnect", {})
    _require(emu, "POST", "/api/errors/clear", {})
    if base is None:
        return
    now = _flat(_get(emu, "/api/status"), EMULATOR_FIELDS)
    if base.get("evse.state") not in (254, 255) and now.get("evse.state") in (254, 255, None):
        _require(emu, "POST", "/api/evse/enable", {})
    posts: list[tuple[str, str, str, str]] = [
        ("evse.current_capacity", "/api/evse/current", "amps", "int"),
        ("ev.max_rate_amps", "/api/ev/max_rate", "amps", "num"),
        ("ev.soc", "/api/ev/soc", "soc", "num"),
        ("evse.service_level", "/api/evse/service_level", "level", "str"),
    ]
    for name, path, key, kind in posts:
        if name in base and now.get(name) != base[name]:
            value = base[name]
            _require(emu, "POST", path, {key: int(value) if kind == "int" else value})


# ---- verification --------------------------------------------------------------------------


def _diff(what: str, now: dict[Any, Any], base: dict[Any, Any]) -> list[str]:
    out = []
    for key in sorted(set(now) | set(base), key=str):
        if now.get(key, "<absent>") != base.get(key, "<absent>"):
            out.append(f"{what} {key}: {now.get(key, '<absent>')!r} (baseline {base.get(key, '<absent>')!r})")
    return out


def verify(target: Target, baseline: Baseline) -> list[str]:
    """Every difference from the baseline (``[]`` = clean); raises ``ResetError`` if the
    state cannot be read."""
    api = target.api
    problems = _diff("config", _config(api), baseline.config)
    problems += _diff("joined peer", _joined(api), baseline.joined)
    if baseline.override is not None:
        now = _optional_get(api, "/override", baseline.unsupported)
        if now != baseline.override:
            problems.append(f"override: {now!r} (baseline {baseline.override!r})")
    if baseline.claims is not None:
        problems += _diff("claim", _claims(api, baseline.unsupported) or {}, baseline.claims)
    if baseline.emulator is not None:
        problems += _diff("emulator", _emulator(target), baseline.emulator)
    if baseline.status is not None:
        problems += _diff("/status", _status(target), baseline.status)
    return problems


def reset_and_verify(
    target: Target,
    baseline: Baseline,
    *,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Reset, then poll ``verify`` until clean or ``timeout``; re-apply the reset every
    ``REAPPLY_AFTER`` s while something differs (a controller's push may land late). A
    refused step ends it at once with ``ok=False``."""
    start = clock()
    rounds = 0
    problems: list[str] = []
    last_apply = -REAPPLY_AFTER
    delay = 0.02
    while True:
        try:
            if clock() - last_apply >= REAPPLY_AFTER:
                rounds += 1
                last_apply = clock()
                reset(target, baseline)
            problems = verify(target, baseline)
        except ResetError as exc:
            return Outcome(False, [str(exc)], set(baseline.unsupported), rounds, clock() - start)
        if not problems:
            return Outcome(True, [], set(baseline.unsupported), rounds, clock() - start)
        if clock() - start >= timeout or any(p.startswith(UNDOABLE_NEVER) for p in problems):
            return Outcome(False, problems, set(baseline.unsupported), rounds, clock() - start)
        sleep(delay)
        delay = min(delay * 1.5, 0.2)
