"""Load-sharing allocation: "equal share with minimums" (firmware.md §3.4, reasons §1.6).

Pure and deterministic: no clock, no I/O. The controller loop calls it every 5 s.

Interface::

    demanding(vehicle, state, online) -> bool            # the §3.4 peer demand test
    GroupSettings.from_config(config) -> GroupSettings   # loadsharing_* keys, §4.1 defaults
    allocate(inputs, settings, *, rotation_offset=0) -> list[Allocation]   # input order
    failsafe_active(inputs, settings) -> bool            # controller's §1.6 flag
    contenders(inputs) -> int                            # members sharing the budget
    Rotation().offset_at(now_s, interval_s, contenders) -> int             # rotation clock
    Allocation.to_json() / Allocation.ws_frame()         # §1.6 row / §7.1 member frame

Decisions (the firmware's, where its source says; ours where the spec is silent):

- ``group_max_current <= 0`` or no inputs → ``[]``: nothing computed (§3.4).
- ``failsafe_mode == "disable"`` and any member offline → every row, offline or idle
  included, is 0 A ``failsafe_disabled``.
- Otherwise each offline member reserves ``failsafe_peer_assumed_current``:
  available = max(0, group_max * safety_factor - offline * assumed). The offline row itself
  is **0 A** ``offline``: the controller cannot command it, and the firmware publishes 0 for
  it; the reservation shows up only as the smaller share of the others.
- Online, demanding, not charging (``charging=False``, EVSE state 2) → its minimum with
  ``connected_min``, outside the budget: an EV in state B draws nothing, and it needs a pilot
  to start at all.
- Not demanding (or offline) → 0 A ``idle`` (``offline`` if offline).
- The charging demanders share the budget. Each one's floor is min(min_current,
  max_current), its cap max_current. If the budget covers every floor, each gets its floor
  plus an equal split of the rest, capped at its max, with what a capped member cannot take
  re-split among the others (exact water-filling) → ``equal_share``. Otherwise they are
  walked in order — priority ascending (lower wins), then id, with each run of equal
  priority rotated left by ``rotation_offset`` — and each whose floor still fits gets it
  (``min_subset``); the rest get 0 A (``insufficient``). A later member with a smaller
  minimum can still fit after a bigger one did not.
- ``rotation_interval == 0`` disables rotation: ``rotation_offset`` is then ignored.
- Targets are rounded down to the milliamp, so their sum never exceeds the budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IDLE = "idle"
CONNECTED_MIN = "connected_min"
EQUAL_SHARE = "equal_share"
MIN_SUBSET = "min_subset"
INSUFFICIENT = "insufficient"
OFFLINE = "offline"
FAILSAFE_DISABLED = "failsafe_disabled"

FAILSAFE_SAFE_CURRENT = "safe_current"
FAILSAFE_DISABLE = "disable"

# EVSE states that never count as demand (§3.4): 0 = not yet read, 254 = sleeping.
_NO_DEMAND_STATES = frozenset({0, 254})
_EPS = 1e-9


@dataclass(frozen=True)
class PeerInput:
    """One group member as the controller sees it; ``id`` is `<hostname>.local` or the host key."""

    id: str
    online: bool
    demanding: bool
    min_current: float
    max_current: float
    priority: int = 0
    # EVSE state 3. False (state 2, EV connected but not drawing) → connected_min.
    charging: bool = True


@dataclass(frozen=True)
class GroupSettings:
    """The group-level config keys (§4.1); defaults are the firmware's."""

    group_max_current: float = 0.0
    safety_factor: float = 1.0
    failsafe_mode: str = FAILSAFE_SAFE_CURRENT
    failsafe_peer_assumed_current: float = 6.0
    rotation_interval: float = 1800

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GroupSettings:
        """Read the long `loadsharing_*` names of a flat config dict; absent keys keep defaults."""
        d = cls()
        return cls(
            group_max_current=float(config.get("loadsharing_group_max_current", d.group_max_current)),
            safety_factor=float(config.get("loadsharing_safety_factor", d.safety_factor)),
            failsafe_mode=str(config.get("loadsharing_failsafe_mode", d.failsafe_mode)),
            failsafe_peer_assumed_current=float(
                config.get("loadsharing_failsafe_peer_assumed_current", d.failsafe_peer_assumed_current)
            ),
            rotation_interval=float(config.get("loadsharing_rotation_interval", d.rotation_interval)),
        )


@dataclass(frozen=True)
class Allocation:
    id: str
    target_current: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        """A `/loadsharing/status` `allocations[]` row (§1.6)."""
        return {"id": self.id, "target_current": self.target_current, "reason": self.reason}

    def ws_frame(self) -> dict[str, Any]:
        """The frame the controller sends a member on its `/ws` (§3.4, §7.1)."""
        return {"loadsharing": {"target_current": self.target_current, "reason": self.reason}}


def demanding(vehicle: int, state: int, online: bool) -> bool:
    """§3.4: a peer demands current iff online, vehicle connected, state not 0 or 254."""
    return online and vehicle == 1 and state not in _NO_DEMAND_STATES


def failsafe_active(inputs: Sequence[PeerInput], settings: GroupSettings) -> bool:
    """The controller's `failsafe_active` (§1.6): the run computed something and saw an offline member."""
    return settings.group_max_current > 0 and any(not p.online for p in inputs)


def contenders(inputs: Sequence[PeerInput]) -> int:
    """Members that share the budget (online, demanding, charging): what `Rotation` counts."""
    return sum(1 for p in inputs if p.online and p.demanding and p.charging)


def _floor_ma(amps: float) -> float:
    # The tiny epsilon keeps 0.3 (stored as 0.29999...) from becoming 0.299.
    return math.floor(amps * 1000 + 1e-6) / 1000


def _order(members: list[tuple[int, PeerInput]], offset: int) -> list[tuple[int, PeerInput]]:
    """Priority ascending, then id; each equal-priority run rotated left by ``offset``."""
    ranked = sorted(members, key=lambda m: (m[1].priority, m[1].id, m[0]))
    out: list[tuple[int, PeerInput]] = []
    start = 0
    while start < len(ranked):
        end = start
        while end < len(ranked) and ranked[end][1].priority == ranked[start][1].priority:
            end += 1
        run = ranked[start:end]
        k = offset % len(run)
        out.extend(run[k:] + run[:k])
        start = end
    return out


def _water_fill(headrooms: list[float], remainder: float) -> list[float]:
    """Split ``remainder`` equally, no share above its headroom; returns each share."""
    shares = [0.0] * len(headrooms)
    left = remainder
    pending = sorted(range(len(headrooms)), key=lambda i: headrooms[i])
    while pending:
        level = left / len(pending)
        smallest = pending[0]
        if headrooms[smallest] <= level:
            shares[smallest] = headrooms[smallest]
            left -= headrooms[smallest]
            pending.pop(0)
        else:
            for i in pending:
                shares[i] = level
            break
    return shares


def allocate(
    inputs: Sequence[PeerInput], settings: GroupSettings, *, rotation_offset: int = 0
) -> list[Allocation]:
    """One allocation run; one row per input, in input order. See the module docstring."""
    if settings.group_max_current <= 0 or not inputs:
        return []
    offline = sum(1 for p in inputs if not p.online)
    if offline and settings.failsafe_mode == FAILSAFE_DISABLE:
        return [Allocation(p.id, 0.0, FAILSAFE_DISABLED) for p in inputs]

    available = max(
        0.0,
        settings.group_max_current * settings.safety_factor
        - offline * settings.failsafe_peer_assumed_current,
    )
    rows: list[Allocation] = [Allocation(p.id, 0.0, IDLE if p.online else OFFLINE) for p in inputs]
    sharing: list[tuple[int, PeerInput]] = []
    for i, p in enumerate(inputs):
        if not (p.online and p.demanding):
            continue
        if p.charging:
            sharing.append((i, p))
        else:
            rows[i] = Allocation(p.id, _floor_ma(_floor_of(p)), CONNECTED_MIN)
    if not sharing:
        return rows

    offset = rotation_offset if settings.rotation_interval > 0 else 0
    ordered = _order(sharing, offset)
    total_min = sum(_floor_of(p) for _, p in ordered)
    if available + _EPS >= total_min:
        headrooms = [max(0.0, p.max_current - _floor_of(p)) for _, p in ordered]
        shares = _water_fill(headrooms, available - total_min)
        for (i, p), share in zip(ordered, shares, strict=True):
            rows[i] = Allocation(p.id, _floor_ma(_floor_of(p) + share), EQUAL_SHARE)
    else:
        budget = available
        for i, p in ordered:
            need = _floor_of(p)
            if budget + _EPS >= need:
                rows[i] = Allocation(p.id, _floor_ma(need), MIN_SUBSET)
                budget -= need
            else:
                rows[i] = Allocation(p.id, 0.0, INSUFFICIENT)
    return rows


def _floor_of(p: PeerInput) -> float:
    """A member's guaranteed share: its minimum, but never above its own max (nor below 0)."""
    return max(0.0, min(p.min_current, p.max_current))


class Rotation:
    """Rotation clock for ``allocate(rotation_offset=...)``, one per controller.

    Mirrors the firmware: rotation only matters while more than one member shares the
    budget; the first such run starts the clock without advancing; afterwards the offset
    advances by one each time ``interval_s`` has elapsed since the last advance. An interval
    of 0 disables it (offset stays where it is and ``allocate`` ignores it).
    """

    def __init__(self) -> None:
        self.offset = 0
        self._last: float | None = None

    def offset_at(self, now_s: float, interval_s: float, contenders: int) -> int:
        """``now_s`` from a monotonic clock; ``contenders`` from `contenders(inputs)`."""
        if interval_s <= 0 or contenders <= 1:
            return self.offset
        if self._last is None:
            self._last = now_s
        elif now_s - self._last >= interval_s:
            self.offset += 1
            self._last = now_s
        return self.offset
