"""Seam for roles, allocation and failsafe (firmware.md §3.4).

The HTTP layer and `/ws` call these hooks. `sharing.LoadSharingService` (built on
`allocation.py`, `claims.py` and `claims_driver.py`) is what `app.py` wires in;
`NullLoadSharing` remains for tests that need a unit without roles."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

RouteHandler = Callable[["web.Request", str], Awaitable["web.StreamResponse"]]


class LoadSharing(Protocol):
    def failsafe_active(self) -> bool: ...

    def allocations(self) -> list[dict[str, Any]]: ...

    def on_allocation_frame(self, frame: dict[str, Any]) -> None:
        """A `{"loadsharing":{...}}` frame received on `/ws` (§3.4, §7.1)."""

    def on_config_changed(self, keys: set[str]) -> None:
        """Accepted POST /config that changed these keys."""

    def routes(self) -> dict[str, RouteHandler]:
        """Extra Mongoose-style patterns (e.g. `/override`, `/claims`) served by this module."""
        ...


class NullLoadSharing:
    """No roles: never in failsafe, no allocations, frames ignored."""

    def failsafe_active(self) -> bool:
        return False

    def allocations(self) -> list[dict[str, Any]]:
        return []

    def on_allocation_frame(self, frame: dict[str, Any]) -> None:
        return None

    def on_config_changed(self, keys: set[str]) -> None:
        return None

    def routes(self) -> dict[str, RouteHandler]:
        return {}
