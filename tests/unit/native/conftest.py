"""Put `native/` on sys.path: `openevse_sim` is not part of the editable install."""

from __future__ import annotations

import sys
from pathlib import Path

_NATIVE = str(Path(__file__).resolve().parents[3] / "native")
if _NATIVE not in sys.path:
    sys.path.insert(0, _NATIVE)
