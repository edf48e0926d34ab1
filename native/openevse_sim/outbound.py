"""Fire-and-forget HTTP requests to peers (reciprocal add §1.3, config reset §1.4)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

FIRE_TIMEOUT = 5.0


class Outbound:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, force_close=True),
                timeout=aiohttp.ClientTimeout(total=10),
            )
        return self._session

    def post_json(self, url: str, body: dict[str, Any], why: str) -> None:
        """Send without waiting; the result is only logged, as the real firmware ignores it."""
        task = asyncio.get_running_loop().create_task(self._post(url, body, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, body: dict[str, Any], why: str) -> None:
        import aiohttp

        try:
            async with self.session().post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=FIRE_TIMEOUT)
            ) as response:
                await response.read()
                print(f"DBUG: {why}: POST {url} -> {response.status}", flush=True)
        except Exception as exc:  # unreachable peers, bad host strings: the firmware ignores the result
            print(f"DBUG: {why}: POST {url} failed: {exc!r}", flush=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._session is not None:
            await self._session.close()
