"""The EVSE manager: the claims table driving the EVSE, and `/override`, `/claims` (firmware.md §7.3, §7.4).

The resolved target (`claims.ClaimsTable`) is brought to the EVSE over RAPI with
`Evse.apply_target` (`$FE` / `$FS` / `$FD`, then `$SC <A> V`) whenever a claim or the EVSE's
state changes, and re-checked every `REASSERT` s (the firmware's Shaper loop is 2 s).
`/status` mirrors it: `claims_version`, `override_version`, `manual_override`, `shaper`,
`shaper_cur` (§7.1)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from openevse_sim.claims import (
    CLAIMS_PARSE_ERROR,
    CLIENT_MANUAL,
    CLIENT_SHAPER,
    OVERRIDE_PARSE_ERROR,
    PRIORITY_API,
    PRIORITY_MANUAL,
    STATE_ACTIVE,
    STATE_DISABLED,
    ClaimError,
    ClaimProperties,
    ClaimsTable,
    override_from_json,
    toggle,
)
from openevse_sim.http_api import read_body, reply
from openevse_sim.tasks import spawn

if TYPE_CHECKING:
    from aiohttp import web

    from openevse_sim.config import Config
    from openevse_sim.evse import Evse

REASSERT = 2.0
BODY_LIMIT = 16 * 1024
CLAIM_FAILED = "Failed to claim"
RELEASE_FAILED = "Failed to release manual override"

Publish = Callable[[dict[str, Any]], None]
RouteHandler = Callable[["web.Request", str], Awaitable["web.StreamResponse"]]


def _reply(status: int, body: Any) -> web.Response:
    return reply(status, body)


def _msg(status: int, text: str) -> web.Response:
    return _reply(status, {"msg": text})


class ClaimsDriver:
    """Owns the claims table; every mutation goes through `set`/`release` so `/status` and the EVSE follow."""

    def __init__(self, config: Config, publish: Publish) -> None:
        self.config = config
        self.publish = publish
        self.evse: Evse | None = None
        self.table = ClaimsTable()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Until the first claim change the EVSE is left as it booted (README: known differences).
        self.engaged = False

    # --- table ----------------------------------------------------------------------------
    def set(self, client: int, priority: int, props: ClaimProperties) -> bool:
        before = self.table.version
        ok = self.table.set(client, priority, props)
        if self.table.version != before:
            self._changed()
        return ok

    def release(self, client: int) -> bool:
        ok = self.table.release(client)
        if ok:
            self._changed()
        return ok

    def _changed(self) -> None:
        self.engaged = True
        self.publish(self.status_fields())
        self._wake.set()

    def status_fields(self) -> dict[str, Any]:
        """The `/status` keys that follow the claims (§7.1)."""
        shaper = self.table.properties(CLIENT_SHAPER)
        evse_max = self.evse.max_current_soft if self.evse is not None else 0
        shaper_on = shaper is not None or self.config.bool_("current_shaper_enabled")
        shaper_cur = shaper.max_current if shaper is not None and shaper.max_current is not None else evse_max
        return {
            "claims_version": self.table.version,
            "override_version": self.table.override_version,
            "manual_override": 1 if self.table.claim(CLIENT_MANUAL) is not None else 0,
            "shaper": 1 if shaper_on else 0,
            "shaper_cur": shaper_cur,
        }

    def on_evse_change(self, changes: dict[str, Any]) -> None:
        """EVSE events: unplugging ends the session (auto-release claims go); a state change re-evaluates."""
        if changes.get("vehicle") == 0 and self.table.release_auto_release():
            self.publish(self.status_fields())
        if {"state", "pilot", "evse_connected", "max_current"} & changes.keys():
            self._wake.set()

    # --- EVSE -----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = spawn(self._run(), "claims")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REASSERT)
            self._wake.clear()
            await self.apply()

    async def apply(self) -> None:
        """One evaluation: the commands `evse_commands` asks for, sent through `Evse.apply_target`."""
        evse = self.evse
        if not self.engaged or evse is None or not evse.connected or not evse.have_status:
            return
        pause_disabled = self.config.bool_("pause_uses_disabled")
        now_state = STATE_DISABLED if evse.state in (254, 255) else STATE_ACTIVE
        # Never ask for more than the hardware allows: a clamped `$NK` would be re-sent forever.
        ceiling = (
            min(evse.max_current_soft, evse.max_current_hard)
            if evse.max_current_hard
            else evse.max_current_soft
        )
        commands = self.table.evse_commands(
            evse.min_current_hard,
            ceiling,
            pause_uses_disabled=pause_disabled,
            evse_state=now_state,
            pilot=evse.pilot,
        )
        if not commands:
            return
        state: str | None = None
        if "$FE" in commands:
            state = STATE_ACTIVE
        elif "$FS" in commands or "$FD" in commands:
            state = STATE_DISABLED
        pilot = next((int(c.split()[1]) for c in commands if c.startswith("$SC ")), None)
        print(f"DBUG: Claims target -> {' '.join(commands)}", flush=True)
        await evse.apply_target(state, pilot, pause_disabled)
        self.publish({"shaper_cur": self.status_fields()["shaper_cur"]})

    # --- HTTP (§7.3, §7.4) ----------------------------------------------------------------
    def routes(self) -> dict[str, RouteHandler]:
        return {"/override$": self.override_route, "/claims": self.claims_route}

    async def _body(self, request: web.Request) -> bytes | None:
        return await read_body(request, BODY_LIMIT)

    async def override_route(self, request: web.Request, path: str) -> web.StreamResponse:
        method = request.method
        if method == "GET":
            props = self.table.properties(CLIENT_MANUAL)
            return _reply(200, {} if props is None else props.to_json())
        if method == "POST":
            raw = await self._body(request)
            try:
                props = override_from_json(raw if raw is not None else b"")
            except ClaimError:
                return _msg(400, OVERRIDE_PARSE_ERROR)
            if not self.set(CLIENT_MANUAL, PRIORITY_MANUAL, props):
                return _msg(500, CLAIM_FAILED)
            return _msg(201, "Created")
        if method == "DELETE":
            if not self.release(CLIENT_MANUAL):
                return _msg(500, RELEASE_FAILED)
            return _msg(200, "Deleted")
        if method == "PATCH":
            new = toggle(self.table.properties(CLIENT_MANUAL), self.table.resolve().state)
            ok = self.release(CLIENT_MANUAL) if new is None else self.set(CLIENT_MANUAL, PRIORITY_MANUAL, new)
            return _msg(200, "Updated") if ok else _msg(500, CLAIM_FAILED)
        return _msg(405, "Method not allowed")

    async def claims_route(self, request: web.Request, path: str) -> web.StreamResponse:
        method = request.method
        rest = path[len("/claims") :]
        if rest in ("", "/"):
            if method == "GET":
                return _reply(200, self.table.list())
            return _msg(405, "Method not allowed")
        if rest == "/target":
            if method == "GET":
                return _reply(200, self.table.target())
            return _msg(405, "Method not allowed")
        text = rest[1:] if rest.startswith("/") else ""
        client = int(text) if text.isdigit() and text.isascii() and len(text) <= 10 else None
        if client is None or client > 0xFFFFFFFF:
            return _msg(404, "Not found")
        if method == "GET":
            found = self.table.get(client)
            return _msg(404, "Not found") if found is None else _reply(200, found)
        if method == "POST":
            raw = await self._body(request)
            try:
                props = ClaimProperties.from_json(raw if raw is not None else b"")
            except ClaimError:
                return _msg(400, CLAIMS_PARSE_ERROR)
            if not self.set(client, PRIORITY_API, props):
                return _msg(400, CLAIM_FAILED)
            return _msg(200, "done")
        if method == "DELETE":
            return _msg(200, "done") if self.release(client) else _msg(404, "Not found")
        return _msg(405, "Method not allowed")
