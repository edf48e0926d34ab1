"""``--trace FILE``: one JSON line per RAPI frame, the dump a firmware developer reads.

Fields: ``t`` (time.monotonic seconds), ``dir`` ("rx" from the client, "tx" to it),
``raw`` (the frame without its ``\\r``), ``command`` (the two-letter code; for a reply, the
code it answers; for an async frame, e.g. "AT"), ``checksum_ok``, and for tx frames
``kind`` ("reply" or "async").
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import IO


class Trace:
    """Thread-safe JSON-lines writer; a no-op when no path was given."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if path is not None:
            self._file = path.open("a", encoding="utf-8", buffering=1)

    def record(
        self, direction: str, raw: bytes, command: str, checksum_ok: bool, kind: str | None = None
    ) -> None:
        if self._file is None:
            return
        entry: dict[str, object] = {
            "t": round(time.monotonic(), 6),
            "dir": direction,
            "raw": raw.rstrip(b"\r").decode("ascii", errors="replace"),
            "command": command,
            "checksum_ok": checksum_ok,
        }
        if kind is not None:
            entry["kind"] = kind
        line = json.dumps(entry, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
