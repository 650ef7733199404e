"""The site file: one TOML file that describes a DER site, its devices and (optionally) its simulators.

Validated by pydantic; `load_site` turns every validation problem into a `SiteFileError` whose message
names the file, the field and what is expected, so that a user can fix the file without reading code.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.core.model import MAX_HORIZON_S, MAX_LIVE_INSTRUCTIONS, Limits, RoleLimits, SiteParams

NonNegKw = Annotated[float, Field(ge=0)]
PositiveS = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]
DnpAddress = Annotated[int, Field(ge=0, le=0xFFEF)]  # DNP3 link addresses 0xFFF0 and up are reserved


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsConfig(_Strict):
    """PCC and device-sum limits in kW; a missing limit means no limit of that kind."""

    export_limit_kw: NonNegKw | None = None
    import_limit_kw: NonNegKw | None = None
    generation_limit_kw: NonNegKw | None = None
    load_limit_kw: NonNegKw | None = None


class LiveCaps(_Strict):
    """Per role, how many of its instructions may be live at once (more are TOO_MANY_INSTRUCTIONS)."""

    ieso: Annotated[int, Field(ge=1)] = int(MAX_LIVE_INSTRUCTIONS.ieso)
    ldc: Annotated[int, Field(ge=1)] = int(MAX_LIVE_INSTRUCTIONS.ldc)


class Horizons(_Strict):
    """Per role, how far ahead (s) an instruction's window may start (later is OUT_OF_RANGE)."""

    ieso: PositiveS = MAX_HORIZON_S.ieso
    ldc: PositiveS = MAX_HORIZON_S.ldc


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
    max_live_instructions: LiveCaps = Field(default_factory=LiveCaps)
    max_horizon_s: Horizons = Field(default_factory=Horizons)


class MqttSection(_Strict):
    broker: str = Field(default="mqtt://127.0.0.1:1883", pattern=r"^mqtts?://[^:/]+(:\d+)?/?$")
    client_id: str | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_max_s: Annotated[float, Field(ge=0.5, le=300)] = 30.0
    # answers and status kept in memory while the broker does not acknowledge them (telemetry has the
    # store's outbox); past it the oldest are dropped, with an alarm in status
    max_queued_messages: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class StoreSection(_Strict):
    """Where the gateway keeps what must survive a restart (instructions, seen ids, audit, telemetry), and
    how much of it: the audit log is sealed into segment files of `audit_segment_records` records
    (in `<path>.audit/`), of which retention keeps the newest `audit_keep_segments` and those with
    records younger than `audit_keep_days` (unset: no limit of that kind)."""

    path: Path = Path("var/der-gateway.sqlite")
    outbox_max_messages: Annotated[int, Field(ge=10)] = 100_000
    # ~340 bytes a record: a segment of 50,000 is a ~17 MB file, sealed in 0.1-0.3 s (measured); the
    # example site writes ~1.6 records a second at rest, so 100 segments keep ~5 weeks in ~1.7 GB
    audit_segment_records: Annotated[int, Field(ge=100)] = 50_000
    audit_keep_segments: Annotated[int, Field(ge=1)] | None = 100
    audit_keep_days: Annotated[float, Field(gt=0)] | None = None
    min_free_mb: Annotated[float, Field(ge=0)] = Field(
        default=200.0, description="below this room left for the store, status and /metrics raise an alarm "
        "while everything is still written (a store that cannot be written refuses instructions)")


class DeviceSim(_Strict):
    """How the simulator of this device behaves (ignored by the gateway)."""

    variant: Literal["ieee1547", "legacy"] = "ieee1547"
    rated_kw: Annotated[float, Field(gt=0)] = 100.0
    capacity_kwh: Annotated[float, Field(gt=0)] = 200.0
    initial_soc_pct: Annotated[float, Field(ge=0, le=100)] = 50.0
    soc_min_pct: Annotated[float, Field(ge=0, le=100)] = 10.0
    soc_max_pct: Annotated[float, Field(ge=0, le=100)] = 95.0
    response_time_s: Annotated[float, Field(ge=0)] = 1.0
    # "light": a first-order lag instead of EPRI OpenDER, for simulating a thousand PV inverters on one box
    physics: Literal["opender", "light"] = "opender"
    # SunSpec maps as some real devices have them (see simulators/sunspec_map.py): the map at base 0 or
    # 50000, scale factors of reactive power and voltage "not implemented", no end model (reading past
    # the last model is answered with exception 2).
    quirks: list[Literal["base_0", "base_50000", "sf_not_implemented", "no_end_model"]] = []
    serial_port: str | None = Field(
        default=None, min_length=1,
        description="transport 'rtu': the serial port the simulator serves the device on (the other end "
        "of the gateway's line, e.g. a pseudo-terminal made by socat)",
    )

    @model_validator(mode="after")
    def _check_quirks(self) -> DeviceSim:
        if {"base_0", "base_50000"} <= set(self.quirks):
            raise ValueError("quirks: 'base_0' and 'base_50000' exclude each other")
        return self


class SerialConfig(_Strict):
    """An RS-485 line: the serial port and its settings, the same on every device of the line."""

    port: str = Field(min_length=1, description="/dev/ttyUSB0, /dev/serial/by-id/..., a pseudo-terminal")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class DeviceConfig(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["pv", "battery", "meter"]
    protocol: Literal["sunspec", "dnp3", "modbus"] = Field(
        default="sunspec", description="modbus: a device without SunSpec, mapped by a vendor profile")
    # Modbus framing and medium: TCP, RTU on a serial line, or RTU frames through a TCP-to-RTU converter.
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = "tcp"
    host: str = "127.0.0.1"
    port: Port | None = Field(default=None, description="TCP port; required unless transport is 'rtu'")
    serial: SerialConfig | None = Field(default=None, description="transport 'rtu': the line")
    # Quiet time between two requests on this device's bus (every device of a bus must agree); on a
    # serial line, at least the 3.5 character times of Modbus RTU whatever is set here.
    inter_request_gap_s: Annotated[float, Field(ge=0, le=5)] = 0.0
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    outstation_address: DnpAddress = Field(default=10, description="dnp3: the device's link address")
    master_address: DnpAddress = Field(default=1, description="dnp3: the gateway's link address")
    profile: str = Field(default="sunspec", description="a file name under device_profiles/ (without .toml)")
    timeout_s: PositiveS = 1.0
    response_time_s: PositiveS = Field(
        default=10.0, description="how long the device may take to follow a new command; off its command "
        "for longer, it is taken as not following and its share goes to the others")
    reversion_timeout_s: Annotated[float, Field(ge=2)] = 30.0
    safe_limit_pct: Annotated[float, Field(ge=0, le=100)] = 0.0
    sim: DeviceSim = Field(default_factory=DeviceSim)

    @model_validator(mode="after")
    def _check_transport(self) -> DeviceConfig:
        if self.transport == "rtu":
            if self.serial is None:
                raise ValueError("serial: required for transport 'rtu' (serial = { port = '/dev/ttyUSB0' })")
            if self.port is not None:
                raise ValueError("port: not used with transport 'rtu' (the line is serial.port)")
        else:
            if self.port is None:
                raise ValueError(f"port: required for transport {self.transport!r}")
            if self.serial is not None:
                raise ValueError(f"serial: only for transport 'rtu', not {self.transport!r}")
            if self.sim.serial_port is not None:
                raise ValueError("sim.serial_port: only for transport 'rtu'")
        if self.protocol == "dnp3" and self.transport != "tcp":
            raise ValueError("transport: protocol 'dnp3' runs over 'tcp'")
        if self.protocol == "modbus" and "profile" not in self.model_fields_set:
            raise ValueError("profile: protocol 'modbus' needs a vendor profile "
                             "(profile = \"<name>\" for device_profiles/vendor_<name>.toml)")
        return self

    @property
    def bus_key(self) -> tuple[str, ...]:
        """What identifies the device's bus: its serial port, or its TCP endpoint."""
        if self.serial is not None:
            return ("serial", self.serial.port)
        return ("tcp", self.host, str(self.port))

    @model_validator(mode="after")
    def _check_dnp3(self) -> DeviceConfig:
        if self.protocol == "dnp3":
            if self.kind != "pv":
                raise ValueError("protocol 'dnp3' is for kind 'pv' (AN2018 active power limit and connect)")
            if "profile" not in self.model_fields_set:
                self.profile = "dnp3"  # device_profiles/dnp3_inverter.toml
        return self


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


class ScadaSection(_Strict):
    """The DNP3 outstation for the LDC's SCADA master (PROTOCOL §9); off unless enabled."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$",
                      description="address to listen on (0.0.0.0: every interface)")
    port: Port = 20000
    outstation_address: DnpAddress = 10
    master_address: DnpAddress = 1


class Sep2Section(_Strict):
    """The IEEE 2030.5 (CSIP-AUS 1.2) client for the LDC role (gateway/north/sep2); off unless enabled.
    The server URL is its DeviceCapability (e.g. https://utility.example:443/dcap); mutual TLS 1.2 with
    the site's ECDSA P-256 certificate, whose SHA-256 fingerprint is the LFDI the server knows it by."""

    enabled: bool = False
    server: str = Field(default="https://127.0.0.1:8443/dcap", pattern=r"^https://[^/\s]+(/\S*)?$",
                        description="the server's DeviceCapability URL")
    ca: Path | None = Field(default=None, description="PEM of the CA that signed the server's certificate")
    cert: Path | None = Field(default=None, description="PEM of the site's client certificate")
    key: Path | None = Field(default=None, description="PEM of the site's private key (ECDSA P-256)")
    csip_aus: Literal["1.2"] = Field(default="1.2", description="the CSIP-AUS version the server speaks")
    pin: Annotated[int, Field(ge=0, le=999999)] | None = Field(
        default=None, description="the registration PIN the utility gave: a server whose Registration says "
        "another stops the client (unset: not checked)")
    # overrides of what the server says; unset: the server's pollRate / postRate
    poll_s: PositiveS | None = None
    post_s: PositiveS | None = None
    max_clock_skew_s: PositiveS = Field(default=60.0, description="a server clock further off than this "
                                        "is an alarm (its offset is used for event times either way)")
    request_timeout_s: PositiveS = 10.0
    backoff_max_s: PositiveS = 300.0
    nominal_v: Annotated[float, Field(gt=0)] = Field(
        default=240.0, description="the PCC's nominal voltage: the meter's per-unit voltage times this is "
        "the V reading posted")
    connection_point_id: str | None = Field(
        default=None, description="the site's connection point as the utility knows it (CSIP-AUS "
        "ConnectionPoint: the NMI in Australia, the LDC's connection or meter point id in Ontario), put to "
        "the EndDevice's ConnectionPointLink whenever the server's differs (unset: not sent)")

    @model_validator(mode="after")
    def _check_files(self) -> Sep2Section:
        missing = [name for name in ("ca", "cert", "key") if getattr(self, name) is None]
        if self.enabled and missing:
            raise ValueError(f"[sep2] is enabled but {', '.join(missing)} is not set: mutual TLS needs the "
                             "server's CA, the site's certificate and its key (PEM files)")
        return self

    @field_validator("connection_point_id")
    @classmethod
    def _check_connection_point(cls, value: str | None) -> str | None:
        # CSIP-AUS 1.2's connectionPointId is a String32; an id with spaces or control characters is a
        # typo, not one a utility hands out
        if value is not None and not re.fullmatch(r"[!-~]{1,32}", value):
            raise ValueError(f"{value!r} is not a connection point id: 1 to 32 printable ASCII characters "
                             "without spaces (CSIP-AUS connectionPointId, e.g. the NMI 4102345678 or the "
                             "LDC's meter point id); leave it unset if the utility gave none")
        return value


LdcInterface = Literal["mqtt", "scada", "sep2"]


class LdcSection(_Strict):
    """Which north interfaces carry the LDC's instructions, and which one is authoritative for what.

    Limits and trips from every interface listed are applied together, the most restrictive winning (one
    limit arriving by two is applied once). What replaces rather than adds (the default envelope) has one
    source: with both MQTT and 2030.5 listed, `default_envelope` must say which. An LDC instruction by an
    interface not listed, or a default envelope by another than its source, is rejected UNAUTHORIZED."""

    interfaces: list[LdcInterface] | None = Field(
        default=None, description="unset: MQTT, plus SCADA and 2030.5 where their sections are enabled")
    default_envelope: LdcInterface | None = Field(
        default=None, description="the interface whose default envelope is the LDC's")


class SiteFile(_Strict):
    site: SiteSection
    mqtt: MqttSection = Field(default_factory=MqttSection)
    store: StoreSection = Field(default_factory=StoreSection)
    devices: list[DeviceConfig] = Field(min_length=1)
    simulator: SimulatorSection = Field(default_factory=SimulatorSection)
    web: WebSection = Field(default_factory=WebSection)
    scada: ScadaSection = Field(default_factory=ScadaSection)
    sep2: Sep2Section = Field(default_factory=Sep2Section)
    ldc: LdcSection = Field(default_factory=LdcSection)

    @model_validator(mode="after")
    def _check_ldc(self) -> SiteFile:
        listed = self.ldc.interfaces
        if listed is not None:
            for name in ("scada", "sep2"):
                if name in listed and not getattr(self, name).enabled:
                    raise ValueError(f"ldc.interfaces lists {name!r} but [{name}] is not enabled")
        interfaces = self.ldc_interfaces
        if not interfaces:
            raise ValueError("ldc.interfaces is empty: the LDC must be able to reach the site")
        # the interfaces that carry a default envelope: MQTT's default_envelope, 2030.5's DefaultDERControl
        defaults = [i for i in interfaces if i in ("mqtt", "sep2")]
        source = self.ldc.default_envelope
        if source is not None and source not in defaults:
            raise ValueError(f"ldc.default_envelope = {source!r} is not one of the interfaces that carry a "
                             f"default envelope here ({', '.join(defaults) or 'none'})")
        if source is None and len(defaults) > 1:
            raise ValueError(
                "two LDC interfaces carry envelopes and a default envelope (MQTT and [sep2]): say which one "
                "is authoritative for the default envelope with [ldc] default_envelope = \"sep2\" (or "
                "\"mqtt\"), or take MQTT out with [ldc] interfaces = [\"sep2\"] (add \"scada\" if it is "
                "enabled)")
        return self

    @property
    def ldc_interfaces(self) -> tuple[LdcInterface, ...]:
        if self.ldc.interfaces is not None:
            return tuple(dict.fromkeys(self.ldc.interfaces))
        enabled: tuple[LdcInterface, ...] = ("scada", "sep2")
        return ("mqtt", *(name for name in enabled if getattr(self, name).enabled))

    @model_validator(mode="after")
    def _check_devices(self) -> SiteFile:
        ids = [d.id for d in self.devices]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"device ids must be unique; repeated: {', '.join(dupes)}")
        meters = [d.id for d in self.devices if d.kind == "meter"]
        if len(meters) != 1:
            raise ValueError(f"exactly one device of kind 'meter' (the PCC meter) is needed; found {meters}")
        endpoints = [(d.bus_key, d.unit_id) for d in self.devices]
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("two devices share the same bus (host and port, or serial port) and unit_id")
        first_on_bus: dict[tuple[str, ...], DeviceConfig] = {}
        for d in self.devices:
            first = first_on_bus.setdefault(d.bus_key, d)
            for name in ("transport", "serial", "inter_request_gap_s"):
                if getattr(d, name) != getattr(first, name):
                    raise ValueError(f"devices {first.id} and {d.id} are on one bus but differ in {name}; "
                                     "every device of a bus must give the same settings")
        return self

    @property
    def meter(self) -> DeviceConfig:
        return next(d for d in self.devices if d.kind == "meter")

    @property
    def controllable(self) -> list[DeviceConfig]:
        return [d for d in self.devices if d.kind != "meter"]


class SiteFileError(Exception):
    """A site file that cannot be used; the message says where and how to fix it."""


class TlsFileError(SiteFileError):
    """A TLS file named by `[mqtt]` that is missing, unreadable, invalid or unsafe; found at start, so
    that `der-gateway run` says which file and how to fix it instead of retrying a broker for ever."""


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


def site_params(site: SiteFile) -> SiteParams:
    s = site.site
    d = s.default_envelope
    return SiteParams(
        site_id=s.id,
        resource_id=s.resource_id,
        export_cap_kw=s.export_cap_kw,
        import_cap_kw=s.import_cap_kw,
        default_envelope=Limits(export_limit_kw=d.export_limit_kw, import_limit_kw=d.import_limit_kw,
                                generation_limit_kw=d.generation_limit_kw, load_limit_kw=d.load_limit_kw),
        dual_participation_priority=s.dual_participation_priority,
        comms_timeout_s=s.comms_timeout_s,
        max_clock_skew_s=s.max_clock_skew_s,
        target_tolerance_kw=s.target_tolerance_kw,
        limit_margin_kw=s.limit_margin_kw,
        max_live_instructions=RoleLimits(ieso=s.max_live_instructions.ieso, ldc=s.max_live_instructions.ldc),
        max_horizon_s=RoleLimits(ieso=s.max_horizon_s.ieso, ldc=s.max_horizon_s.ldc),
    )
