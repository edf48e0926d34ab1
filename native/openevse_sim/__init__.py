"""openevse-sim: a stand-in for the OpenEVSE WiFi native firmware (spec/firmware.md)."""

from __future__ import annotations

VERSION = "v0.1.0-sim"  # mDNS TXT `version` and /config `version`
BUILD_ENV = "native_openevse"  # mDNS TXT `type` and /config `buildenv` (§2.1)
