"""pytest plugin of the harness (options, fixtures, report hooks). Filled in by the core."""

from __future__ import annotations
