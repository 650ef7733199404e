"""The site file: one TOML file that describes a DER site, its devices and (optionally) its simulators.

Validated by pydantic; `load_site` turns every validation problem into a `SiteFileError` whose message
names the file, the field and what is expected, so that a user can fix the file without reading code.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NonNegKw = Annotated[float, Field(ge=0)]
PositiveS = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsConfig(_Strict):
    """PCC and device-sum limits in kW; a missing limit means no limit of that kind."""

    export_limit_kw: NonNegKw | None = None
    import_limit_kw: NonNegKw | None = None
    generation_limit_kw: NonNegKw | None = None
    load_limit_kw: NonNegKw | None = None


class SiteSection(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    resource_id: str = Field(min_length=1, max_length=128)
    name: str = ""
    export_cap_kw: NonNegKw = Field(description="connection agreement: maximum export at the PCC")
    import_cap_kw: NonNegKw = Field(description="connection agreement: maximum import at the PCC")
    default_envelope: LimitsConfig = Field(
        default_factory=lambda: LimitsConfig(export_limit_kw=0.0),
        description="limits applied when the LDC link is lost, until the LDC sends a default_envelope",
    )
    dual_participation_priority: Literal["ieso", "ldc"] = "ieso"
    control_interval_s: PositiveS = 1.0
    telemetry_interval_s: PositiveS = 5.0
    status_interval_s: PositiveS = 60.0
    comms_timeout_s: PositiveS = 90.0
    max_clock_skew_s: PositiveS = 300.0
    target_tolerance_kw: NonNegKw = 2.0
    limit_margin_kw: NonNegKw = 1.0


class MqttSection(_Strict):
    broker: str = Field(default="mqtt://127.0.0.1:1883", pattern=r"^mqtts?://[^:/]+(:\d+)?/?$")
    client_id: str | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_max_s: Annotated[float, Field(ge=0.5, le=300)] = 30.0
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class StoreSection(_Strict):
    """Where the gateway keeps what must survive a restart (instructions, seen ids, audit, telemetry)."""

    path: Path = Path("var/der-gateway.sqlite")
    outbox_max_messages: Annotated[int, Field(ge=10)] = 100_000


class DeviceSim(_Strict):
    """How the simulator of this device behaves (ignored by the gateway)."""

    variant: Literal["ieee1547", "legacy"] = "ieee1547"
    rated_kw: Annotated[float, Field(gt=0)] = 100.0
    capacity_kwh: Annotated[float, Field(gt=0)] = 200.0
    initial_soc_pct: Annotated[float, Field(ge=0, le=100)] = 50.0
    soc_min_pct: Annotated[float, Field(ge=0, le=100)] = 10.0
    soc_max_pct: Annotated[float, Field(ge=0, le=100)] = 95.0
    response_time_s: Annotated[float, Field(ge=0)] = 1.0


class DeviceConfig(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["pv", "battery", "meter"]
    protocol: Literal["sunspec"] = "sunspec"
    host: str = "127.0.0.1"
    port: Port
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    profile: str = Field(default="sunspec", description="a file name under device_profiles/ (without .toml)")
    timeout_s: PositiveS = 1.0
    reversion_timeout_s: Annotated[float, Field(ge=2)] = 30.0
    safe_limit_pct: Annotated[float, Field(ge=0, le=100)] = 0.0
    sim: DeviceSim = Field(default_factory=DeviceSim)


class SimulatorSection(_Strict):
    """Site-level simulator settings: the uncontrolled site load and the sun."""

    load_kw: NonNegKw = 80.0
    load_variation_kw: NonNegKw = 0.0
    load_period_s: PositiveS = 600.0
    irradiance_pu: Annotated[float, Field(ge=0, le=1.2)] = 0.9
    control_port: Port | None = None


class WebSection(_Strict):
    """The status page, /api/status and /metrics. Loopback by default: open it to the site LAN only on
    purpose (it has no authentication; see docs/install.md)."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    port: Port = 8080


class SiteFile(_Strict):
    site: SiteSection
    mqtt: MqttSection = Field(default_factory=MqttSection)
    store: StoreSection = Field(default_factory=StoreSection)
    devices: list[DeviceConfig] = Field(min_length=1)
    simulator: SimulatorSection = Field(default_factory=SimulatorSection)
    web: WebSection = Field(default_factory=WebSection)

    @model_validator(mode="after")
    def _check_devices(self) -> SiteFile:
        ids = [d.id for d in self.devices]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"device ids must be unique; repeated: {', '.join(dupes)}")
        meters = [d.id for d in self.devices if d.kind == "meter"]
        if len(meters) != 1:
            raise ValueError(f"exactly one device of kind 'meter' (the PCC meter) is needed; found {meters}")
        endpoints = [(d.host, d.port, d.unit_id) for d in self.devices]
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("two devices share the same host, port and unit_id")
        return self

    @property
    def meter(self) -> DeviceConfig:
        return next(d for d in self.devices if d.kind == "meter")

    @property
    def controllable(self) -> list[DeviceConfig]:
        return [d for d in self.devices if d.kind != "meter"]


class SiteFileError(Exception):
    """A site file that cannot be used; the message says where and how to fix it."""


def _location(loc: tuple, data: dict) -> str:
    """`devices[1] (pv2).port` rather than `devices.1.port`: name the device the user wrote."""
    parts: list[str] = []
    node: object = data
    for p in loc:
        if isinstance(p, int):
            parts[-1] += f"[{p}]"
            node = node[p] if isinstance(node, list) and p < len(node) else None
            if isinstance(node, dict) and "id" in node:
                parts[-1] += f" ({node['id']})"
        else:
            parts.append(str(p))
            node = node.get(p) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def _describe(err: ValidationError, path: Path, data: dict) -> str:
    lines = [f"{path}: {err.error_count()} problem(s) in the site file"]
    for e in err.errors():
        loc = _location(e["loc"], data)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see examples/site.toml)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_site(data: dict, path: Path | str = "<site>") -> SiteFile:
    try:
        return SiteFile.model_validate(data)
    except ValidationError as err:
        raise SiteFileError(_describe(err, Path(path), data)) from None


def load_site(path: Path | str) -> SiteFile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteFileError(f"{path}: no such site file (try examples/site.toml)") from None
    except tomllib.TOMLDecodeError as err:
        raise SiteFileError(f"{path}: not valid TOML: {err}") from None
    return parse_site(data, path)
