"""Helpers of the integration suite: one polling helper, deadlines derived from the spec,
and small typed wrappers over the firmware's HTTP contract (firmware.md §1, §7).

Only the documented contract is used, so everything here holds for a real build as well as
for the stand-in. Units are reached through the harness's ``Pair`` (duck-typed below).
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import pytest
import requests

T = TypeVar("T")

# --- deadlines (seconds), each derived from the contract ------------------------------------

POLL_INTERVAL = 0.05
# firmware.md §2.3 (measured): a real build's mDNS sweep blocks the whole firmware, HTTP
# included, for 5.0 s about every 11 s. Every deadline below allows one such stall.
SWEEP_STALL = 5.0
# §2.3: peers listed 9.1 s after POST /loadsharing/discover on a real build; a POST arriving
# during a sweep is answered only when that sweep ends.
DISCOVERY_DEADLINE = 12.0 + SWEEP_STALL
# A browser of the test: python-zeroconf/Avahi answer an already-published service in ~1.2 s
# (engineering.md §3.1); a unit re-announces within its probe/announce cycle (~1.7 s).
MDNS_BROWSE_DEADLINE = 10.0
# §3.2: an add wakes the poller, whose bootstrap GET /status has a 10 s HTTP timeout.
PEER_STATUS_DEADLINE = 10.0 + SWEEP_STALL
# §4.1: the smallest accepted heartbeat; §3.3: online iff a status no older than it was seen,
# recomputed every 0.5 s poller loop.
HEARTBEAT_TIMEOUT = 5
OFFLINE_DEADLINE = HEARTBEAT_TIMEOUT + 0.5 + SWEEP_STALL + 1.0
# §3.2: after failures the poller retries with backoff 1 s * 2^n, capped at 60 s.
BACKOFF_CAP = 60.0
# §6.2 / evse.md §1: state changes reach the firmware as $AT at once; while charging it
# reads $GG every 1 s. Allow one sweep stall and a couple of RAPI cycles.
EVSE_DEADLINE = 3.0 + SWEEP_STALL
# §3.2/§3.3: a peer's state change reaches the observer as a WebSocket frame at once; allow
# the EVSE round trip and a sweep stall on each of the two firmwares. Well below the default
# 30 s heartbeat, after which a poller would re-fetch /status anyway.
LIVE_FEED_DEADLINE = EVSE_DEADLINE + SWEEP_STALL
# §7.3/§7.4: claims are evaluated by the firmware's loop; no cadence is specified beyond it.
CLAIMS_DEADLINE = 2.0 + SWEEP_STALL

# An address:port on loopback where no firmware listens: valid host syntax (§1.3 rule 6),
# never reachable, so no identity is ever learned and no traffic leaves the host.
UNREACHABLE_HOST = "127.0.0.1:1"

COMPUTED_AT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


# --- what the suite needs of the harness (the documented Pair contract) ----------------------


class Api(Protocol):
    def get(self, path: str, **kw: Any) -> requests.Response: ...
    def post(self, path: str, json: Any = ..., **kw: Any) -> requests.Response: ...
    def delete(self, path: str) -> requests.Response: ...
    def request(self, method: str, path: str, **kw: Any) -> requests.Response: ...


class Unit(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def hostname(self) -> str: ...
    @property
    def long_id(self) -> str: ...
    @property
    def firmware_url(self) -> str: ...
    @property
    def firmware_port(self) -> int: ...
    @property
    def api(self) -> Api: ...
    @property
    def emulator_api(self) -> Api: ...


class Group(Protocol):
    """A started rig: ``len``, iteration and ``[i]`` give units; members can be restarted,
    stopped and started again (firmware only; start waits for readiness incl. the EVSE link)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Unit: ...
    def restart_firmware(self, index: int) -> Any: ...
    def stop_member(self, index: int) -> Any: ...
    def start_member(self, index: int) -> Any: ...


def units(group: Group) -> list[Unit]:
    return [group[i] for i in range(len(group))]


# --- polling -------------------------------------------------------------------------------


class NotYet(Exception):
    """Raised by a check to say "not yet", with what it saw."""


_RETRY = (AssertionError, NotYet, requests.RequestException, ValueError)


def eventually(
    check: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns without raising (an assert failing, ``NotYet``, an HTTP
    error or unparsable JSON mean "not yet"); return its result. At the deadline, fail the
    test with the last reason seen (plus ``diagnose()``, if given). The only way this suite
    waits."""
    start = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            return check()
        except _RETRY as exc:
            last = f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            note = f"\n{diagnose()}" if diagnose is not None else ""
            pytest.fail(
                f"{what}: not within {timeout:.1f}s ({attempts} attempts, {elapsed:.1f}s); "
                f"last: {last}{note}",
                pytrace=False,
            )
        time.sleep(min(interval, timeout - elapsed))


# --- HTTP helpers --------------------------------------------------------------------------


def body_of(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise AssertionError(
            f"{resp.request.method} {resp.url}: not JSON ({resp.status_code}): {resp.text[:300]!r}"
        ) from exc


def expect(resp: requests.Response, status: int) -> Any:
    """Assert the status code; return the JSON body."""
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.url}: expected {status}, got {resp.status_code}: {resp.text[:300]!r}"
    )
    return body_of(resp)


def expect_msg(resp: requests.Response, status: int, msg: str) -> None:
    """Assert status and the exact message envelope ``{"msg": msg}`` (firmware.md §1.1)."""
    body = expect(resp, status)
    assert body == {"msg": msg}, (
        f"{resp.request.method} {resp.url}: expected {{'msg': {msg!r}}}, got {body!r}"
    )


def get_peers(unit: Unit) -> list[dict[str, Any]]:
    body = expect(unit.api.get("/loadsharing/peers"), 200)
    assert isinstance(body, list), f"GET /loadsharing/peers: not a bare array: {body!r}"
    return body


def get_ls_status(unit: Unit) -> dict[str, Any]:
    body = expect(unit.api.get("/loadsharing/status"), 200)
    assert isinstance(body, dict), f"GET /loadsharing/status: not an object: {body!r}"
    return body


def get_status(unit: Unit) -> dict[str, Any]:
    body = expect(unit.api.get("/status"), 200)
    assert isinstance(body, dict), f"GET /status: not an object: {body!r}"
    return body


def add_peer(unit: Unit, host: str, reciprocal: bool | None = None) -> requests.Response:
    payload: dict[str, Any] = {"host": host}
    if reciprocal is not None:
        payload["reciprocal"] = reciprocal
    return unit.api.post("/loadsharing/peers", json=payload)


def peer_path(host: str) -> str:
    """``/loadsharing/peers/{host}`` with the host percent-encoded (``:`` → ``%3A``, §1.4)."""
    return "/loadsharing/peers/" + quote(host, safe="")


def delete_peer(unit: Unit, host: str) -> requests.Response:
    return unit.api.delete(peer_path(host))


def post_config(unit: Unit, changes: dict[str, Any]) -> None:
    """POST /config and require success (§4.3: 200 with ``msg`` "done" or "no change")."""
    body = expect(unit.api.post("/config", json=changes), 200)
    assert body.get("msg") in ("done", "no change"), f"POST /config {changes}: {body!r}"


def emulator_post(unit: Unit, path: str, payload: dict[str, Any] | None = None) -> None:
    """Drive the EVSE emulator's control API (evse.md §6): 200 ``{"success": true}``."""
    resp = unit.emulator_api.post(path, json=payload or {})
    body = expect(resp, 200)
    assert body.get("success") is True, f"emulator POST {path}: {body!r}"


def raw_request(unit: Unit, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """Send ``path`` exactly as written (no client-side re-quoting), e.g. a malformed %-escape."""
    parts = urlsplit(unit.firmware_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=SWEEP_STALL + 5)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data.decode("utf-8", "replace")


# --- naming and lookup ---------------------------------------------------------------------


def self_host(unit: Unit) -> str:
    """The host under which a unit lists itself, and tells peers on a reciprocal add (§1.2)."""
    return f"{unit.hostname}.local"


def loopback_host(unit: Unit) -> str:
    """How the suite adds a unit manually: its HTTP port on loopback (bypasses mDNS)."""
    return f"localhost:{unit.firmware_port}"


def matching(
    rows: Iterable[dict[str, Any]], *, peer_id: str | None = None, host: str | None = None
) -> list[dict[str, Any]]:
    """Rows that are this peer: same id (when known), or the exact host string.

    Hosts drift (§2.4: ``localhost:8001`` → ``<instance>.local:8001`` once the id is known and a
    sweep sees it), ids do not; manual entries have id ``""`` until learned (§1.2)."""
    return [
        r
        for r in rows
        if (peer_id and str(r.get("id", "")).lower() == peer_id.lower())
        or (host is not None and r.get("host") == host)
    ]


def find_peer(
    rows: Iterable[dict[str, Any]], *, peer_id: str | None = None, host: str | None = None
) -> dict[str, Any] | None:
    """The row of this peer, preferring a joined one (a discovered-only duplicate may exist)."""
    found = matching(rows, peer_id=peer_id, host=host)
    joined = [r for r in found if r.get("joined") is True]
    best = joined or found
    return best[0] if best else None


def row_of(rows: Iterable[dict[str, Any]], unit: Unit, host: str | None = None) -> dict[str, Any]:
    """The row of ``unit`` in ``rows`` (by id, else ``host``); asserts it is there."""
    rows = list(rows)
    row = find_peer(rows, peer_id=unit.long_id, host=host)
    assert row is not None, f"no row for unit {unit.index} (id {unit.long_id}, host {host}): {rows!r}"
    return row


def joined_rows(rows: Iterable[dict[str, Any]], unit: Unit, host: str | None = None) -> list[dict[str, Any]]:
    return [r for r in matching(rows, peer_id=unit.long_id, host=host) if r.get("joined") is True]


# --- type checks ---------------------------------------------------------------------------


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def assert_fields(obj: dict[str, Any], types: dict[str, Callable[[object], bool] | type], where: str) -> None:
    """Every key present with the right type (bool is not accepted as a number)."""
    for key, kind in types.items():
        assert key in obj, f"{where}: missing {key!r} in {obj!r}"
        value = obj[key]
        ok = (type(value) is kind) if isinstance(kind, type) else kind(value)
        assert ok, f"{where}: {key!r} = {value!r} has the wrong type (want {getattr(kind, '__name__', kind)})"
