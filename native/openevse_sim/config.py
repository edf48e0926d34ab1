"""Config keys, defaults, value typing, §4.3 validation and the EEPROM-image file (firmware.md §4).

The real firmware keeps config in an EEPROM image (`epoxyeepromdata` in the cwd, or
`EPOXY_EEPROM_DATA`); the stand-in writes JSON to the same path. Only a successful
`POST /config` that changes something commits; `--set-config` is applied in memory only (§4.2)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ConfigValue = bool | int | float | str

# Long name -> default. The Python type of the default is the option's type.
DEFAULTS: dict[str, ConfigValue] = {
    # network / web
    "ssid": "",
    "pass": "",
    "hostname": "",  # "" -> openevse-<shortid>
    "www_http_port": 8000,  # native build default (§0)
    "www_https_port": 8443,
    "www_username": "",
    "www_password": "",
    "www_certificate_id": "",
    # EVSE link
    "heartbeat_interval": 5,
    "heartbeat_current": 6,
    "pause_uses_disabled": False,
    "vehicle_data_src": 0,
    "divert_type": -1,
    "charge_mode": "fast",
    "current_shaper_enabled": False,
    "mqtt_enabled": False,
    "emoncms_enabled": False,
    "ohm_enabled": False,
    "time_zone": "",
    # load sharing (§4.1)
    "loadsharing_enabled": False,
    "loadsharing_role": "",
    "loadsharing_controller_host": "",
    "loadsharing_group_id": "",
    "loadsharing_group_max_current": 0.0,
    "loadsharing_safety_factor": 1.0,
    "loadsharing_heartbeat_timeout": 30,
    "loadsharing_failsafe_mode": "safe_current",
    "loadsharing_failsafe_safe_current": 6.0,
    "loadsharing_failsafe_peer_assumed_current": 6.0,
    "loadsharing_priority": 0,
    "loadsharing_rotation_interval": 1800,
    "loadsharing_config_version": 0,
    "loadsharing_config_updated_at": 0,
}

SECRET_KEYS = ("pass", "www_password")
SECRET_PLACEHOLDER = "_DUMMY_PASSWORD"  # noqa: S105 - what GET /config shows for a set secret
MEMBER_READ_ONLY_MSG = "Load sharing configuration is read-only on members"


class ConfigError(Exception):
    """A rejected POST /config: HTTP status and the exact §4.3 message."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


def type_cli_value(text: str) -> ConfigValue:
    """§4.2 typing: true/false -> bool; plain base-10 integer -> int; text with '.' that parses -> float."""
    if text in ("true", "false"):
        return text == "true"
    body = text[1:] if text[:1] in "+-" else text
    if body.isdigit() and body.isascii():
        return int(text)
    if "." in text:
        try:
            value = float(text)
        except ValueError:
            return text
        if math.isfinite(value):
            return value
    return text


def _as_number(value: Any) -> float:
    """ArduinoJson-style `as<double>()`: numbers and bools convert, anything else is 0."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # a JSON integer beyond double range
            return math.inf if value > 0 else -math.inf
    return 0.0


def coerce(key: str, value: Any) -> ConfigValue | None:
    """Convert a JSON/CLI value to the option's type; None when it cannot be stored."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return value != 0
        return None
    if isinstance(default, int):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return int(value)
        return None
    if isinstance(default, float):
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, int):
            number = _as_number(value)
            return number if math.isfinite(number) else None
        if isinstance(value, float) and math.isfinite(value):
            return value
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


@dataclass
class PostResult:
    changed: bool
    config_version: int
    changed_keys: list[str]
    left_member: str | None  # controller host to un-join when the unit left the member role (§4.3)


class Config:
    """In-memory config plus the file it is committed to."""

    def __init__(self, path: Path, default_hostname: str) -> None:
        self.path = path
        self.default_hostname = default_hostname
        self.values: dict[str, ConfigValue] = dict(DEFAULTS)
        self.version = 1
        self.load_error: str | None = None
        self._load()

    # --- storage -------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            self.load_error = str(exc)
            return
        try:
            data = json.loads(raw)
        except ValueError as exc:
            self.load_error = f"corrupt config image: {exc}"
            return
        if not isinstance(data, dict):
            return
        for key, value in data.items():
            if key in DEFAULTS:
                typed = coerce(key, value)
                if typed is not None:
                    self.values[key] = typed

    def commit(self) -> None:
        """Write the whole in-memory config (CLI overrides included, as the real EEPROM commit)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.values, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)

    def factory_reset(self) -> None:
        """`/reset`: defaults in memory, the image file removed."""
        self.values = dict(DEFAULTS)
        self.version += 1
        self.path.unlink(missing_ok=True)

    # --- accessors -----------------------------------------------------------------------
    def get(self, key: str) -> ConfigValue:
        return self.values[key]

    def str_(self, key: str) -> str:
        return str(self.values[key])

    def int_(self, key: str) -> int:
        value = self.values[key]
        return int(value) if not isinstance(value, str) else 0

    def float_(self, key: str) -> float:
        value = self.values[key]
        return float(value) if not isinstance(value, str) else 0.0

    def bool_(self, key: str) -> bool:
        return bool(self.values[key])

    @property
    def hostname(self) -> str:
        return self.str_("hostname") or self.default_hostname

    @property
    def http_port(self) -> int:
        return self.int_("www_http_port")

    @property
    def is_member(self) -> bool:
        return self.bool_("loadsharing_enabled") and self.str_("loadsharing_role") == "member"

    @property
    def is_controller(self) -> bool:
        return self.bool_("loadsharing_enabled") and self.str_("loadsharing_role") == "controller"

    @property
    def sta_mode(self) -> bool:
        """The mock Wi-Fi connects only to the SSID `EPX_OK` (§5.4); otherwise the unit stays in AP mode."""
        return self.str_("ssid") == "EPX_OK"

    @property
    def heartbeat_timeout(self) -> float:
        return float(self.int_("loadsharing_heartbeat_timeout"))

    # --- CLI (§4.2) ----------------------------------------------------------------------
    def apply_cli(self, name: str, text: str) -> bool:
        """Apply `--set-config NAME=VALUE` in memory; False if unknown key or value unchanged."""
        if name not in DEFAULTS:
            return False
        typed = coerce(name, type_cli_value(text))
        if typed is None or (typed == self.values[name] and type(typed) is type(self.values[name])):
            return False
        self.values[name] = typed
        return True

    # --- GET /config (§7.2) --------------------------------------------------------------
    def public_view(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.values.items():
            if key in SECRET_KEYS:
                out[key] = SECRET_PLACEHOLDER if value else ""
            elif key == "hostname":
                out[key] = self.hostname
            else:
                out[key] = value
        return out

    # --- POST /config (§4.3) -------------------------------------------------------------
    def post(self, body: Any) -> PostResult:
        """Validate and store a POST /config body; raises ConfigError with the §4.3 status/message."""
        if not isinstance(body, dict):
            raise ConfigError(400, "Could not parse JSON")
        ls_keys = [k for k in body if isinstance(k, str) and k.startswith("loadsharing_")]
        role_in_body = body.get("loadsharing_role") if "loadsharing_role" in body else None
        push_signature = isinstance(role_in_body, str) and role_in_body in ("member", "")
        if self.is_member and ls_keys and not push_signature:
            raise ConfigError(403, MEMBER_READ_ONLY_MSG)
        self._validate(body)
        left_member: str | None = None
        if role_in_body == "" and self.str_("loadsharing_role") == "member":
            left_member = self.str_("loadsharing_controller_host")
        changed: list[str] = []
        for key, value in body.items():
            if key not in DEFAULTS:
                continue
            typed = coerce(key, value)
            if typed is None:
                continue
            if typed != self.values[key] or type(typed) is not type(self.values[key]):
                self.values[key] = typed
                changed.append(key)
        if left_member is not None:
            for key in ("loadsharing_role", "loadsharing_controller_host"):
                if self.values[key] != "":
                    self.values[key] = ""
                    changed.append(key)
        if changed:
            self.version += 1
            self.commit()
        return PostResult(
            changed=bool(changed), config_version=self.version, left_member=left_member, changed_keys=changed
        )

    def _validate(self, body: dict[str, Any]) -> None:
        def num(key: str) -> float | None:
            return _as_number(body[key]) if key in body else None

        value = num("loadsharing_group_max_current")
        if value is not None and not value >= 0:
            raise ConfigError(400, "loadsharing_group_max_current must be >= 0")
        value = num("loadsharing_safety_factor")
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(400, "loadsharing_safety_factor must be between 0.0 and 1.0")
        value = num("loadsharing_heartbeat_timeout")
        if value is not None and not 5 <= value <= 600:
            raise ConfigError(400, "loadsharing_heartbeat_timeout must be between 5 and 600 seconds")
        value = num("loadsharing_failsafe_safe_current")
        if value is not None and not 0 <= value <= 80:
            raise ConfigError(400, "loadsharing_failsafe_safe_current must be between 0 and 80 amps")
        value = num("loadsharing_failsafe_peer_assumed_current")
        if value is not None and not 0 <= value <= 80:
            raise ConfigError(400, "loadsharing_failsafe_peer_assumed_current must be between 0 and 80 amps")
        if "loadsharing_failsafe_mode" in body and body["loadsharing_failsafe_mode"] not in (
            "safe_current",
            "disable",
        ):
            raise ConfigError(400, "loadsharing_failsafe_mode must be 'safe_current' or 'disable'")
        # Cross-field (§4.3): failsafe <= group max when group max > 0, incoming value else stored.
        if "loadsharing_failsafe_safe_current" in body or "loadsharing_group_max_current" in body:
            group = num("loadsharing_group_max_current")
            group = self.float_("loadsharing_group_max_current") if group is None else group
            safe = num("loadsharing_failsafe_safe_current")
            safe = self.float_("loadsharing_failsafe_safe_current") if safe is None else safe
            if group > 0 and safe > group:
                raise ConfigError(
                    400, "loadsharing_failsafe_safe_current must not exceed loadsharing_group_max_current"
                )
