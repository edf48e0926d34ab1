"""The harness benchmark: how fast a rig starts, converges and stops, and how that grows with N;
what one RAPI round trip costs through each serial bridge.

``python -m bench`` (or ``make bench``) measures, prints a table and writes ``bench/out/``."""

from __future__ import annotations
