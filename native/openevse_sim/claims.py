"""EVSE claims and the manual override (firmware.md §7.3, §7.4; shaper claim §3.4).

Pure: the HTTP layer parses bodies with these helpers and maps `ClaimError` to 400 with
``{"msg": str(err)}``; the RAPI layer frames what `ClaimsTable.evse_commands` returns.

Interface::

    ClaimProperties.from_json(obj) / .to_json()          # POST /claims/<client> body, GET shapes
    override_from_json(body) -> ClaimProperties           # POST /override body
    toggle(current_override, target_state) -> ClaimProperties | None   # PATCH /override
    shaper_claim(limit_a, evse_min, force_disabled=False) -> ClaimProperties  # load-sharing limit
    table = ClaimsTable()
    table.set(client, priority, props) -> bool            # False: all 10 slots taken
    table.release(client) -> bool                         # False: no such claim (404)
    table.get(client) -> dict | None                      # GET /claims/<client>
    table.list() -> list[dict]                            # GET /claims
    table.target() -> dict                                # GET /claims/target
    table.resolve() -> Target                             # the same, typed
    table.evse_commands(min_current, max_current, ...) -> list[str]    # "$FE", "$SC 16 V", ...
    table.version, table.override_version                 # /status claims_version, override_version
    table.release_auto_release() -> list[int]             # at session end (EV unplugged)

Decisions (the firmware's EvseManager, where its source says):

- Per property (state, charge_current, max_current) the highest-priority claim that sets it
  wins; on equal priority the claim in the lower slot (the older one, slots are reused)
  wins; a claim at priority ≤ 0 never wins. With no state claim the target state is
  ``active``. The target's ``auto_release`` is always false.
- The pilot the EVSE gets is: its configured max, lowered to the winning ``max_current``,
  lowered to the winning ``charge_current``, then raised to the EVSE minimum. So the
  effective current is min(charge_current winner, max_current winner), and a limit below
  the minimum does **not** by itself pause: whoever sets the limit also sets state
  ``disabled`` (as `shaper_claim` does), exactly like the firmware's Current Shaper.
- Currents are whole amps (the firmware stores uint32): fractional input is truncated.
  Accepted range 0…80 A; ``"clear"`` unsets a property (the firmware's own keyword).
- ``version`` counts changes (a re-claim with identical properties is not one) and, like
  the firmware's uint8 counter, wraps at 256. ``override_version`` counts changes to the
  manual claim only.
- PATCH /override follows the firmware's toggle: with an override present it is released;
  without one, a new override opposes the current target state (active → disabled, else
  active), with auto_release.
- A manual override without ``auto_release`` in its body gets ``auto_release: true``;
  other claims default to false.
"""

from __future__ import annotations

import builtins
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLIENT_MANUAL = 65537  # 0x00010001
CLIENT_SHAPER = 65548  # 0x0001000C: the load-sharing limit rides on it (§3.4)
CLIENT_LOADSHARING = 65550  # 0x0001000E: defined, never used by the firmware

PRIORITY_API = 500  # POST /claims/<client>
PRIORITY_MANUAL = 1000  # /override
PRIORITY_LIMIT = 1100
PRIORITY_SAFETY = 5000  # the shaper claim, so load sharing outranks a manual override

MAX_CLAIMS = 10  # EVSE_MANAGER_MAX_CLIENT_CLAIMS
MAX_AMPS = 80

STATE_ACTIVE = "active"
STATE_DISABLED = "disabled"
_STATES = (STATE_ACTIVE, STATE_DISABLED)
_CLEAR = "clear"

CLAIMS_PARSE_ERROR = "Could not parse JSON"
OVERRIDE_PARSE_ERROR = "Failed to parse JSON"


class ClaimError(ValueError):
    """Bad claim or override input. ``str(err)`` is the HTTP 400 message; ``detail`` says why."""

    def __init__(self, msg: str, detail: str = "") -> None:
        super().__init__(msg)
        self.detail = detail


def _load(body: object, msg: str) -> Mapping[str, Any]:
    """Accept raw JSON text/bytes or an already parsed value; it must be an object."""
    if isinstance(body, str | bytes | bytearray):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ClaimError(msg, f"not JSON: {exc}") from exc
    if not isinstance(body, Mapping):
        raise ClaimError(msg, "body is not a JSON object")
    return body


def _current(obj: Mapping[str, Any], key: str, msg: str) -> int | None:
    value = obj.get(key)
    if value == _CLEAR:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ClaimError(msg, f"{key} must be a number of amps")
    if not 0 <= value <= MAX_AMPS:
        raise ClaimError(msg, f"{key} must be between 0 and {MAX_AMPS}")
    return int(value)


@dataclass(frozen=True)
class ClaimProperties:
    """What one claim asks for; ``None`` = this claim does not set that property."""

    state: str | None = None
    charge_current: int | None = None
    max_current: int | None = None
    auto_release: bool = False

    @classmethod
    def from_json(cls, obj: object, *, msg: str = CLAIMS_PARSE_ERROR) -> ClaimProperties:
        """Validate a claim body (text, bytes or parsed); unknown keys are ignored."""
        data = _load(obj, msg)
        state: str | None = None
        if "state" in data:
            raw = data["state"]
            if raw != _CLEAR and raw not in _STATES:
                raise ClaimError(msg, "state must be 'active' or 'disabled'")
            state = None if raw == _CLEAR else str(raw)
        charge = _current(data, "charge_current", msg) if "charge_current" in data else None
        maximum = _current(data, "max_current", msg) if "max_current" in data else None
        auto_release = False
        if "auto_release" in data:
            if not isinstance(data["auto_release"], bool):
                raise ClaimError(msg, "auto_release must be true or false")
            auto_release = data["auto_release"]
        return cls(state, charge, maximum, auto_release)

    def to_json(self) -> dict[str, Any]:
        """Set properties only, then ``auto_release`` (always present), as in GET /claims."""
        out: dict[str, Any] = {}
        if self.state is not None:
            out["state"] = self.state
        if self.charge_current is not None:
            out["charge_current"] = self.charge_current
        if self.max_current is not None:
            out["max_current"] = self.max_current
        out["auto_release"] = self.auto_release
        return out


def override_from_json(body: object) -> ClaimProperties:
    """POST /override body → the manual claim's properties (auto_release defaults to true)."""
    data = _load(body, OVERRIDE_PARSE_ERROR)
    props = ClaimProperties.from_json(data, msg=OVERRIDE_PARSE_ERROR)
    if "auto_release" not in data:
        props = ClaimProperties(props.state, props.charge_current, props.max_current, True)
    return props


def toggle(current: ClaimProperties | None, target_state: str) -> ClaimProperties | None:
    """PATCH /override: ``None`` = release the override, else claim these properties.

    ``current`` is the manual claim (``table.properties(CLIENT_MANUAL)``), ``target_state``
    the resolved target state (``table.resolve().state``).
    """
    if current is not None:
        return None
    new_state = STATE_DISABLED if target_state == STATE_ACTIVE else STATE_ACTIVE
    return ClaimProperties(state=new_state, auto_release=True)


def shaper_claim(limit_a: float, evse_min: float, *, force_disabled: bool = False) -> ClaimProperties:
    """The Current Shaper claim carrying a load-sharing limit or failsafe (§3.4).

    ``max_current = floor(limit)``; state ``disabled`` when forced (``failsafe_disabled``,
    failsafe mode ``disable``) or when the limit is below the EVSE minimum; otherwise the
    claim leaves the state alone. Claim it at ``PRIORITY_SAFETY`` as ``CLIENT_SHAPER``.
    """
    disabled = force_disabled or limit_a < evse_min
    return ClaimProperties(
        state=STATE_DISABLED if disabled else None,
        max_current=max(0, math.floor(limit_a)),
    )


@dataclass(frozen=True)
class Claim:
    client: int
    priority: int
    properties: ClaimProperties


@dataclass(frozen=True)
class Target:
    """The resolved target: the winning value of each property and who set it."""

    state: str = STATE_ACTIVE
    charge_current: int | None = None
    max_current: int | None = None
    state_client: int | None = None
    charge_current_client: int | None = None
    max_current_client: int | None = None

    def pilot(self, min_current: int, max_current: int) -> int:
        """The pilot amps: configured max, lowered by the limits, raised to the minimum."""
        amps = max_current
        if self.max_current is not None:
            amps = min(amps, self.max_current)
        if self.charge_current is not None:
            amps = min(amps, self.charge_current)
        return max(amps, min_current)


class ClaimsTable:
    """The EVSE manager's claim slots. Not thread-safe: call it from one event loop."""

    def __init__(self) -> None:
        self.version = 0
        self.override_version = 0
        self._slots: builtins.list[Claim | None] = [None] * MAX_CLAIMS

    def _index(self, client: int) -> int | None:
        for i, claim in enumerate(self._slots):
            if claim is not None and claim.client == client:
                return i
        return None

    def _changed(self, client: int) -> None:
        self.version = (self.version + 1) & 0xFF
        if client == CLIENT_MANUAL:
            self.override_version = (self.override_version + 1) & 0xFF

    def set(self, client: int, priority: int, props: ClaimProperties) -> bool:
        """Add or replace ``client``'s claim; a new client takes the first free slot."""
        index = self._index(client)
        if index is None:
            index = next((i for i, c in enumerate(self._slots) if c is None), None)
            if index is None:
                return False
        claim = Claim(client, priority, props)
        if self._slots[index] != claim:
            self._slots[index] = claim
            self._changed(client)
        return True

    def release(self, client: int) -> bool:
        index = self._index(client)
        if index is None:
            return False
        self._slots[index] = None
        self._changed(client)
        return True

    def release_auto_release(self) -> builtins.list[int]:
        """Session over: drop every auto_release claim; returns their clients.

        The firmware does this without bumping ``version``; so do we.
        """
        dropped: builtins.list[int] = []
        for i, claim in enumerate(self._slots):
            if claim is not None and claim.properties.auto_release:
                dropped.append(claim.client)
                self._slots[i] = None
        return dropped

    def claim(self, client: int) -> Claim | None:
        index = self._index(client)
        return None if index is None else self._slots[index]

    def properties(self, client: int) -> ClaimProperties | None:
        found = self.claim(client)
        return None if found is None else found.properties

    def get(self, client: int) -> dict[str, Any] | None:
        """GET /claims/<client>: ``{priority, ...properties}``, or None for 404."""
        found = self.claim(client)
        if found is None:
            return None
        return {"priority": found.priority, **found.properties.to_json()}

    def list(self) -> builtins.list[dict[str, Any]]:
        """GET /claims, in slot order."""
        return [
            {"client": c.client, "priority": c.priority, **c.properties.to_json()}
            for c in self._slots
            if c is not None
        ]

    def resolve(self) -> Target:
        state, state_client, state_prio = STATE_ACTIVE, None, 0
        charge, charge_client, charge_prio = None, None, 0
        maximum, max_client, max_prio = None, None, 0
        for c in self._slots:
            if c is None:
                continue
            p = c.properties
            if p.state is not None and c.priority > state_prio:
                state, state_client, state_prio = p.state, c.client, c.priority
            if p.charge_current is not None and c.priority > charge_prio:
                charge, charge_client, charge_prio = p.charge_current, c.client, c.priority
            if p.max_current is not None and c.priority > max_prio:
                maximum, max_client, max_prio = p.max_current, c.client, c.priority
        return Target(state, charge, maximum, state_client, charge_client, max_client)

    def target(self) -> dict[str, Any]:
        """GET /claims/target; ``claims`` names only the properties some claim sets."""
        t = self.resolve()
        props = ClaimProperties(t.state, t.charge_current, t.max_current, False).to_json()
        owners: dict[str, int] = {}
        if t.state_client is not None:
            owners["state"] = t.state_client
        if t.charge_current_client is not None:
            owners["charge_current"] = t.charge_current_client
        if t.max_current_client is not None:
            owners["max_current"] = t.max_current_client
        return {"properties": props, "claims": owners}

    def evse_commands(
        self,
        min_current: int,
        max_current: int,
        *,
        pause_uses_disabled: bool = False,
        evse_state: str | None = None,
        pilot: int | None = None,
    ) -> builtins.list[str]:
        """RAPI commands (unframed) that bring the EVSE to the target (§6.2 claim evaluation).

        ``min_current``/``max_current``: the EVSE's minimum and configured maximum (``$GC``).
        ``evse_state`` (``"active"``/``"disabled"``, i.e. state 254/255 → disabled) and
        ``pilot``: what the EVSE has now; a command is left out when it would change
        nothing, and always sent when the current value is unknown (None). Order: state
        first, then pilot. Disabled → ``$FS`` (sleep) or ``$FD`` with ``pause_uses_disabled``.
        """
        t = self.resolve()
        out: builtins.list[str] = []
        if evse_state is None or evse_state != t.state:
            if t.state == STATE_ACTIVE:
                out.append("$FE")
            else:
                out.append("$FD" if pause_uses_disabled else "$FS")
        amps = t.pilot(min_current, max_current)
        if pilot is None or pilot != amps:
            out.append(f"$SC {amps} V")
        return out
