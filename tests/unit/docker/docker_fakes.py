"""A fake Docker client: just enough of the SDK's surface for the backend and reaper."""

from __future__ import annotations

import itertools
from typing import Any

from docker.errors import ImageNotFound, NotFound

_ids = itertools.count(1)


class FakeContainer:
    def __init__(self, engine: FakeEngine, image: str, kwargs: dict[str, Any]) -> None:
        n = next(_ids)
        self.id = f"{n:064x}"
        self.short_id = self.id[:12]
        self.engine = engine
        self.image = image
        self.kwargs = kwargs
        self.labels: dict[str, str] = dict(kwargs.get("labels") or {})
        self.status = "created"
        self.exit_code = 0
        self.output = b""
        self.ports: dict[str, Any] = {}
        self.removed = False

    def _journal(self, what: str) -> None:
        self.engine.journal.append((what, self.short_id))

    def _exists(self) -> None:
        if self.removed:
            raise NotFound(f"no container {self.short_id}")

    @property
    def attrs(self) -> dict[str, Any]:
        return {"State": {"Status": self.status, "ExitCode": self.exit_code}}

    def start(self) -> None:
        self._exists()
        self._journal("start")
        if self.engine.exit_on_start is not None:
            self.status, self.exit_code = "exited", self.engine.exit_on_start
            self.output = self.engine.output_on_exit
            return
        self.status = "running"
        self.output = b"ready\n"
        requested = self.kwargs.get("ports") or {}
        self.ports = {
            key: [{"HostIp": host_ip, "HostPort": str(32768 + 2 * next(_ids) + i)}]
            for i, (key, (host_ip, _none)) in enumerate(sorted(requested.items()))
        }

    def reload(self) -> None:
        self._exists()

    def stop(self, timeout: int = 10) -> None:
        self._exists()
        self._journal("stop")
        self.stop_timeout = timeout
        if self.status == "running":
            self.output += b"stopped on SIGTERM\n"
        self.status = "exited"

    def logs(self, **kwargs: Any) -> bytes:
        self._exists()
        self._journal("logs")
        return self.output

    def remove(self, force: bool = False) -> None:
        self._exists()
        self._journal("remove")
        self.removed = True
        self.engine.containers_.remove(self)


class FakeContainers:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def create(self, image: str, **kwargs: Any) -> FakeContainer:
        if image not in self.engine.images.present:
            raise ImageNotFound(f"no such image: {image}")
        container = FakeContainer(self.engine, image, kwargs)
        self.engine.containers_.append(container)
        self.engine.journal.append(("create", container.short_id))
        return container

    def list(
        self, all: bool = False, filters: dict[str, Any] | None = None, ignore_removed: bool = False
    ) -> list[FakeContainer]:
        self.engine.list_filters.append(filters)
        wanted = (filters or {}).get("label", [])
        wanted = [wanted] if isinstance(wanted, str) else wanted

        def matches(c: FakeContainer) -> bool:
            for item in wanted:
                key, eq, value = item.partition("=")
                if key not in c.labels or (eq and c.labels[key] != value):
                    return False
            return True

        return [c for c in list(self.engine.containers_) if matches(c)]


class FakeImages:
    def __init__(self, present: set[str]) -> None:
        self.present = present

    def get(self, name: str) -> object:
        if name not in self.present:
            raise ImageNotFound(f"no such image: {name}")
        return object()


class FakeEngine:
    """The client: ``FakeEngine(images={...})``; pass ``lambda: engine`` as the factory."""

    def __init__(self, images: set[str] | None = None) -> None:
        self.images = FakeImages(images or set())
        self.containers_: list[FakeContainer] = []
        self.containers = FakeContainers(self)
        self.journal: list[tuple[str, str]] = []
        self.list_filters: list[dict[str, Any] | None] = []
        self.exit_on_start: int | None = None
        self.output_on_exit = b""

    def ping(self) -> bool:
        return True
