"""SunSpec device profiles: `device_profiles/<profile>_<role>.toml`, data rather than code.

A profile says, for one kind of device (pv, battery, meter), which SunSpec models to look for in
which order of preference, which point gives each canonical quantity, which points carry the power
command and the connect command, and the sign convention of W. Point references are written
`alias.Point`, where the alias names a model slot of the variant (`meas = [701]`, `inv = [103, 102,
101]`); every reference is checked against pysunspec2's model definitions when the profile is loaded,
so a typo is reported with the file and field rather than found on site.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.south.sunspec_models import PointDef, model_def

PROFILES_DIR = Path(__file__).resolve().parents[2] / "device_profiles"
ROLE_OF_KIND = {"pv": "inverter", "battery": "battery", "meter": "meter"}

PointRef = Annotated[str, Field(pattern=r"^[a-z_]+\.[A-Za-z][A-Za-z0-9_.]*$")]
Candidates = Annotated[list[PointRef], Field(description="first point the device implements wins")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StatusPoint(_Strict):
    """A boolean read from an enum (true if its value is one of the symbols) or a bitfield (any bit)."""

    point: PointRef
    true_if: list[str] = Field(min_length=1)


class ReadMap(_Strict):
    """Canonical quantities in SI units (W, var, V, Hz, %), after scale factors."""

    p_w: Candidates = Field(min_length=1)
    q_var: Candidates = []
    hz: Candidates = []
    v: Candidates = []
    v_nominal: Candidates = []
    rated_w: Candidates = []
    available_w: Candidates = []
    max_charge_w: Candidates = []
    max_discharge_w: Candidates = []
    soc_pct: Candidates = []
    soc_min_pct: Candidates = []
    soc_max_pct: Candidates = []
    connected: StatusPoint | None = None


class PowerControl(_Strict):
    """The active power command: written as value, fixed settings and timers, then enable."""

    unit: Literal["pct_of_rated", "W"]
    value: PointRef
    enable: PointRef
    enabled: str = "ENABLED"
    settings: dict[PointRef, str] = Field(default={}, description="fixed enum settings, e.g. WSetMod")
    reversion_timer: PointRef
    reversion_value: PointRef | None = None
    reversion_enable: PointRef | None = None
    reversion: float | Literal["safe_limit_pct"] = Field(
        default=0.0, description="the device's own safe value after the reversion timeout, in `unit` (W: "
        "+ = into the grid), or the site's safe_limit_pct; the driver writes the lower of it and the "
        "command's revert_kw")
    reverts_to_no_limit: bool = Field(
        default=False, description="the model has no reversion value: when its timer runs out the device "
        "drops the limit (123). The timer is then written as 0 (the device keeps the last command) "
        "whenever full output would exceed the safe limit or the LDC's share")

    @model_validator(mode="after")
    def _check_reversion(self) -> PowerControl:
        if self.reversion == "safe_limit_pct" and self.unit != "pct_of_rated":
            raise ValueError("reversion = 'safe_limit_pct' needs unit = 'pct_of_rated'")
        if self.reverts_to_no_limit and self.reversion_value:
            raise ValueError("reverts_to_no_limit = true is for a model without a reversion_value")
        return self


class ConnectControl(_Strict):
    point: PointRef
    connect: str
    disconnect: str
    reversion_timer: PointRef | None = Field(
        default=None, description="the connect control's timeout (123 Conn_RvrtTms), written as 0 before the "
        "point: the device keeps the state it was given when the gateway stops (123 would reconnect)")


class Variant(_Strict):
    name: str = Field(min_length=1)
    models: dict[str, list[int]] = Field(min_length=1, description="alias = model ids, first present wins")
    optional_models: dict[str, list[int]] = {}
    read: ReadMap
    power: PowerControl | None = None
    connect: ConnectControl | None = None
    heartbeat: PointRef | None = None

    @model_validator(mode="after")
    def _check_points(self) -> Variant:
        for ids in (*self.models.values(), *self.optional_models.values()):
            if not ids:
                raise ValueError("every model alias needs at least one model id")
            for mid in ids:
                try:
                    model_def(mid)
                except KeyError:
                    raise ValueError(f"model {mid} is not a SunSpec model pysunspec2 knows") from None
        for field, ref, symbols, writable in self._references():
            try:
                pdefs = self.points(ref)
            except ValueError as err:
                raise ValueError(f"{field}: {err}") from None
            for pdef in pdefs:
                if writable and pdef.access != "RW":
                    raise ValueError(f"{field}: {ref} is read-only")
                missing = [s for s in symbols if s not in pdef.symbols]
                if missing:
                    have = sorted(pdef.symbols)
                    raise ValueError(f"{field}: {ref} has no symbol {missing[0]!r} (has {have})")
        return self

    def points(self, ref: str) -> list[PointDef]:
        """The definition of `ref` in every candidate model of its alias (ValueError if unknown)."""
        alias, _, name = ref.partition(".")
        ids = self.models.get(alias) or self.optional_models.get(alias)
        if ids is None:
            have = sorted({**self.models, **self.optional_models})
            raise ValueError(f"{ref}: no model alias {alias!r} (have {have})")
        out = []
        for mid in ids:
            mdef = model_def(mid)
            if name not in mdef.points:
                raise ValueError(f"{ref}: model {mid} ({mdef.name}) has no point {name!r}")
            out.append(mdef.points[name])
        return out

    def _references(self) -> list[tuple[str, str, list[str], bool]]:
        """Every point reference: (field, ref, symbols it must have, whether it is written)."""
        refs: list[tuple[str, str, list[str], bool]] = []
        for field in ReadMap.model_fields:
            value = getattr(self.read, field)
            if isinstance(value, StatusPoint):
                refs.append((f"read.{field}", value.point, value.true_if, False))
            elif value:
                refs.extend((f"read.{field}", ref, [], False) for ref in value)
        if self.power:
            p = self.power
            refs.append(("power.value", p.value, [], True))
            refs.append(("power.enable", p.enable, [p.enabled], True))
            refs.append(("power.reversion_timer", p.reversion_timer, [], True))
            refs.extend(("power.settings", ref, [sym], True) for ref, sym in p.settings.items())
            if p.reversion_value:
                refs.append(("power.reversion_value", p.reversion_value, [], True))
            if p.reversion_enable:
                refs.append(("power.reversion_enable", p.reversion_enable, [p.enabled], True))
        if self.connect:
            c = self.connect
            refs.append(("connect.point", c.point, [c.connect, c.disconnect], True))
            if c.reversion_timer:
                refs.append(("connect.reversion_timer", c.reversion_timer, [], True))
        if self.heartbeat:
            refs.append(("heartbeat", self.heartbeat, [], True))
        return refs


class Profile(_Strict):
    kind: Literal["pv", "battery", "meter"]
    description: str = ""
    positive_w: Literal["injection", "absorption"] = Field(
        description="what a positive W means on this device: power into the grid side (generation, "
        "discharge, export) or out of it; applies to reads and to W setpoints"
    )
    variants: list[Variant] = Field(min_length=1, description="in order of preference")

    @model_validator(mode="after")
    def _check_kind(self) -> Profile:
        for v in self.variants:
            if self.kind == "meter" and (v.power or v.connect):
                raise ValueError(f"variant {v.name!r}: a meter profile takes no power or connect control")
            if self.kind != "meter" and not (v.power and v.read.rated_w):
                raise ValueError(f"variant {v.name!r}: a {self.kind} needs power control and read.rated_w")
        return self

    @property
    def sign(self) -> int:
        """+1 when the device's positive W is ours (into the grid side), else -1."""
        return 1 if self.positive_w == "injection" else -1


class ProfileError(Exception):
    """A profile that cannot be used; the message names the file and the field."""


def _location(loc: tuple[int | str, ...], data: dict) -> str:
    """`variants[1] (legacy).power.value` rather than `variants.1.power.value`."""
    parts: list[str] = []
    node: object = data
    for p in loc:
        if isinstance(p, int) and parts:
            parts[-1] += f"[{p}]"
            node = node[p] if isinstance(node, list) and p < len(node) else None
            if isinstance(node, dict) and "name" in node:
                parts[-1] += f" ({node['name']})"
        else:
            parts.append(str(p))
            node = node.get(p) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def parse_profile(data: dict, path: Path | str = "<profile>") -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as err:
        lines = [f"{path}: {err.error_count()} problem(s) in the device profile"]
        for e in err.errors():
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown field"
            elif e["type"] == "value_error":
                msg = str(e["ctx"]["error"])  # our own message, without pydantic's "Value error, "
            lines.append(f"  - {_location(e['loc'], data)}: {msg}")
        raise ProfileError("\n".join(lines)) from None


@cache
def load_profile(name: str, kind: str, directory: Path = PROFILES_DIR) -> Profile:
    """The profile `<directory>/<name>_<role>.toml` for a device of `kind` (role: inverter/battery/meter)."""
    path = directory / f"{name}_{ROLE_OF_KIND[kind]}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such device profile (profile {name!r}, kind {kind!r})") from None
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{path}: not valid TOML: {err}") from None
    profile = parse_profile(data, path)
    if profile.kind != kind:
        raise ProfileError(f"{path}: kind: the profile is for {profile.kind!r}, the device is {kind!r}")
    return profile
