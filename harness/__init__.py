"""OpenEVSE multi-instance harness: N emulator + bridge + firmware pairs, in parallel, cleaned up.

    from harness import Rig, Settings
    with Rig(Settings.from_env(), 3) as rig:
        rig[0].api.get_json("/status")

Names are imported lazily, so light entry points (the Docker reaper, `harness --help`) do not
pay for the whole library."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.pair import Pair
    from harness.rig import Rig, RigStartError
    from harness.settings import Settings

__all__ = ["Pair", "Rig", "RigStartError", "Settings"]

_WHERE = {
    "Pair": "harness.pair",
    "Rig": "harness.rig",
    "RigStartError": "harness.rig",
    "Settings": "harness.settings",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
