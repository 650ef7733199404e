"""LDC SCADA over DNP3, the pure part (PROTOCOL §9): the point list of `device_profiles/scada_dnp3.toml`,
which SCADA commands are accepted, the LDC messages they become, and the point values of a cycle.

No DNP3 library here: commands and points are plain values, so every rule is tested without sockets.
A command becomes the JSON an LDC would publish over MQTT, decoded by the protocol codec, so a SCADA
limit or trip is an LDC instruction in every respect (same checks, digest, raw payload for the audit).
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.model import Inbound, Invalid
from gateway.core.outbound import Telemetry
from gateway.protocol.codec import decode_inbound

POINT_LIST = Path(__file__).resolve().parents[2] / "device_profiles" / "scada_dnp3.toml"
OPEN_ENDED = timedelta(days=3650)  # an envelope needs an end: a SCADA limit lasts until BO17 OFF
PREFIX = {"limit": "scada-limit-", "stop": "scada-stop-", "trip": "scada-trip-"}
SCADA_PREFIX = "scada-"

BinaryRole = Literal["stop", "connect", "limit_enable"]


class _Point(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int = Field(ge=0)
    name: str
    an2018: bool
    meaning: str = ""


class BinaryOutput(_Point):
    role: BinaryRole
    readback: str


class AnalogOutput(_Point):
    role: Literal["limit_setpoint"]
    min: float
    max: float
    unit: str
    readback: str


class BinaryInput(_Point):
    quantity: Literal["device_comms_error", "scada_stop", "scada_switch_closed", "scada_limit",
                      "ldc_link_ok", "ieso_link_ok"]


class AnalogInput(_Point):
    quantity: Literal["rated_kw", "devices_total", "available_kw", "soc_pct", "limit_setpoint", "site_hz",
                      "site_p_kw", "site_q_kvar", "site_v_pu", "export_limit_kw", "export_limit_source",
                      "import_limit_kw", "import_limit_source", "target_kw", "target_source", "mode",
                      "devices_online", "available_up_kw", "available_down_kw"]
    unit: str
    scale: float = Field(gt=0)


class PointList(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    point_count: int = Field(gt=0, le=65535)
    default_setpoint: float
    binary_outputs: list[BinaryOutput]
    analog_outputs: list[AnalogOutput]
    binary_inputs: list[BinaryInput]
    analog_inputs: list[AnalogInput]
    enums: dict[Literal["mode", "source"], dict[str, int]]

    def binary_output(self, index: int) -> BinaryOutput | None:
        return next((p for p in self.binary_outputs if p.index == index), None)

    def analog_output(self, index: int) -> AnalogOutput | None:
        return next((p for p in self.analog_outputs if p.index == index), None)


@cache
def load_point_list(path: Path = POINT_LIST) -> PointList:
    points = PointList.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    every = [p.index for kind in (points.binary_outputs, points.analog_outputs, points.binary_inputs,
                                  points.analog_inputs) for p in kind]
    if max(every) >= points.point_count:
        raise ValueError(f"{path}: an index is not below point_count {points.point_count}")
    return points


# ---- commands ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operated:
    """A command SCADA operated: a binary output set on/off, or an analog output set to a value."""

    index: int
    on: bool | None = None
    value: float | None = None


def check(points: PointList, op: Operated) -> str:
    """The DNP3 command status of a SELECT or OPERATE (a select is checked exactly like its operate)."""
    if op.value is None:
        if points.binary_output(op.index) is None or op.on is None:
            return "NOT_SUPPORTED"
        return "SUCCESS"
    ao = points.analog_output(op.index)
    if ao is None:
        return "NOT_SUPPORTED"
    if math.isnan(op.value) or not ao.min <= op.value <= ao.max:
        return "OUT_OF_RANGE"
    return "SUCCESS"


@dataclass
class ScadaState:
    """What SCADA set that the core does not keep: AO88 (also while BO17 is OFF), and the id clock."""

    setpoint: float
    last_n: int = 0

    def next_n(self, now: datetime) -> int:
        self.last_n = max(self.last_n + 1, int(now.timestamp() * 1000))
        return self.last_n


@dataclass(frozen=True)
class InForce:
    """The SCADA instructions in force (ids, newest last), from the core's list of active ids."""

    limit: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    trip: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, active: Sequence[str]) -> InForce:
        def kind(prefix: str) -> list[str]:
            return sorted((i for i in active if i.startswith(prefix)), key=lambda i: int(i.rsplit("-", 1)[1]))

        return cls(kind(PREFIX["limit"]), kind(PREFIX["stop"]), kind(PREFIX["trip"]))


def messages(points: PointList, state: ScadaState, op: Operated, in_force: InForce, export_cap_kw: float,
             now: datetime) -> list[Inbound | Invalid]:
    """The LDC messages an operated (and checked) command becomes; may be none (e.g. OFF when off)."""
    payloads: list[dict[str, Any]] = []

    def envelope() -> None:
        n = state.next_n(now)
        env: dict[str, Any] = {
            "type": "envelope", "id": f"{PREFIX['limit']}{n}", "start": _iso(now),
            "end": _iso(now + OPEN_ENDED), "reason": "other",
            "export_limit_kw": round(state.setpoint / 1000 * export_cap_kw, 3)}
        if in_force.limit:
            env["replaces"] = in_force.limit[-1]
        payloads.append(env)

    def override(kind: str, action: str) -> None:
        payloads.append({"type": "override", "id": f"{PREFIX[kind]}{state.next_n(now)}", "action": action,
                         "start": _iso(now), "reason": "scada"})

    def cancel(refs: list[str]) -> None:
        payloads.extend({"type": "cancel", "id": f"scada-cancel-{state.next_n(now)}", "ref": ref}
                        for ref in refs)

    if op.value is not None:
        state.setpoint = op.value
        if in_force.limit:
            envelope()
    else:
        role = points.binary_output(op.index).role  # type: ignore[union-attr]  # checked before
        if role == "limit_enable" and op.on:
            envelope()
        elif role == "limit_enable":
            cancel(in_force.limit)
        elif role == "stop":
            if op.on and not in_force.stop:
                override("stop", "cease_to_energize")
            elif not op.on:
                cancel(in_force.stop)
        elif not op.on and not in_force.trip:  # connect switch opened
            override("trip", "disconnect")
        elif op.on:
            cancel(in_force.trip)
    out: list[Inbound | Invalid] = []
    for p in payloads:
        body = {"v": 1, "issuer": "ldc", "issued_at": _iso(now), **p}
        out.append(decode_inbound("ldc", p["type"], json.dumps(body).encode()))
    return out


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


# ---- point values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointValues:
    binary_inputs: dict[int, bool]
    analog_inputs: dict[int, float]  # raw (scaled, rounded)
    binary_outputs: dict[int, bool]
    analog_outputs: dict[int, float]


@dataclass(frozen=True)
class Facts:
    """What the points of a cycle need beside its telemetry: status, bindings and device sums."""

    comms: dict[str, str]
    in_force: InForce
    setpoint: float
    devices_online: int
    devices_total: int
    rated_kw: float
    available_kw: float
    export_binding: str
    import_binding: str


def values(points: PointList, t: Telemetry, f: Facts) -> PointValues:
    """Every point of a cycle, from that cycle's telemetry content and status: the same numbers MQTT
    carries, so SCADA and the market side never see two versions of the site."""
    site, eff = t.site, t.effective
    source = points.enums["source"]

    def source_of(binding: str) -> int:
        kind, _, ref = binding.partition(":")
        return source["scada"] if ref.startswith(SCADA_PREFIX) else source.get(kind, source["unknown"])

    quantities: dict[str, float | bool] = {
        "device_comms_error": f.devices_online < f.devices_total, "scada_stop": bool(f.in_force.stop),
        "scada_switch_closed": not f.in_force.trip, "scada_limit": bool(f.in_force.limit),
        "ldc_link_ok": f.comms.get("ldc") == "ok", "ieso_link_ok": f.comms.get("ieso") == "ok",
        "rated_kw": f.rated_kw, "devices_total": f.devices_total, "available_kw": f.available_kw,
        "soc_pct": site.soc_pct or 0.0, "limit_setpoint": f.setpoint, "site_hz": site.hz or 0.0,
        "site_p_kw": site.p_kw or 0.0, "site_q_kvar": site.q_kvar or 0.0, "site_v_pu": site.v_pu or 0.0,
        "export_limit_kw": eff.export_limit_kw, "export_limit_source": source_of(f.export_binding),
        "import_limit_kw": eff.import_limit_kw, "import_limit_source": source_of(f.import_binding),
        "target_kw": eff.target_kw, "target_source": source_of(eff.binding),
        "mode": points.enums["mode"][eff.mode], "devices_online": f.devices_online,
        "available_up_kw": site.available_up_kw, "available_down_kw": site.available_down_kw,
    }
    return PointValues(
        binary_inputs={p.index: bool(quantities[p.quantity]) for p in points.binary_inputs},
        analog_inputs={p.index: float(round(float(quantities[p.quantity]) * p.scale))
                       for p in points.analog_inputs},
        binary_outputs={p.index: bool(quantities[_READBACK[p.role]]) for p in points.binary_outputs},
        analog_outputs={p.index: f.setpoint for p in points.analog_outputs},
    )


_READBACK = {"stop": "scada_stop", "connect": "scada_switch_closed", "limit_enable": "scada_limit"}
