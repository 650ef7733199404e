"""A site on paper for cycle-script tests: `site.send(...)` / `site.cycle()` → expectations.

Devices are ideal: each produces exactly its last setpoint (within what it can do now), and the PCC meter
reads Σ device power − site load. The clock only moves when the test moves it. Unless `keep_alive` is
off, both roles send a heartbeat before every cycle, so that only the comms tests see a link lost.

Field faults: `site.stuck` names devices that answer but keep their output whatever they are told;
`site.reading_scale` makes a device's own readings off by a factor (an inverter that measures a few per
cent high), while the meter still sees what it really puts out.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.core import model as m
from gateway.core.engine import Cycle, Engine
from gateway.core.outbound import Outbound, Response

T0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
PARAMS = m.SiteParams(site_id="site-1", resource_id="DER-1", export_cap_kw=300.0, import_cap_kw=400.0,
                      default_envelope=m.Limits(export_limit_kw=50.0, import_limit_kw=400.0),
                      target_tolerance_kw=1.0)
ROLE_OF = {"dispatch": "ieso", "envelope": "ldc", "default_envelope": "ldc", "override": "ldc",
           "outage": "ldc", "service": "ldc"}
CLASSES: dict[str, type[m.Message]] = {"dispatch": m.Dispatch, "service": m.Service, "envelope": m.Envelope,
                                       "default_envelope": m.DefaultEnvelope, "override": m.Override,
                                       "outage": m.Outage, "cancel": m.Cancel, "heartbeat": m.Heartbeat}
LIMIT_FIELDS = ("export_limit_kw", "import_limit_kw", "generation_limit_kw", "load_limit_kw")


def pv(dev_id: str, available_kw: float, rated_kw: float = 250.0) -> m.DeviceReading:
    return m.DeviceReading(dev_id, "pv", True, False, 0.0, 0.0, rated_kw, available_kw, 0.0, None, True)


def battery(dev_id: str, discharge_kw: float, charge_kw: float, soc_pct: float = 50.0) -> m.DeviceReading:
    return m.DeviceReading(dev_id, "battery", True, False, 0.0, 0.0, 200.0, discharge_kw, charge_kw, soc_pct,
                           True)


def message(msg_type: str, msg_id: str, now: datetime, **fields: Any) -> m.Message:
    """A domain message with sensible defaults: issued now, window [now + start, now + end) in seconds."""
    fields.setdefault("issuer", ROLE_OF.get(msg_type, "ieso"))
    fields.setdefault("issued_at", now)
    if msg_type in ("dispatch", "service", "envelope", "outage", "override"):
        fields["start"] = now + timedelta(seconds=fields.get("start", 0))
        if msg_type != "override" or "end" in fields:
            fields["end"] = now + timedelta(seconds=fields.get("end", 300))
    if msg_type == "dispatch":
        fields.setdefault("resource_id", PARAMS.resource_id)
        fields.setdefault("product", "energy")
        fields.setdefault("kind", "algorithmic")
    if msg_type in ("envelope", "default_envelope"):
        fields["limits"] = m.Limits(**{k: fields.pop(k) for k in LIMIT_FIELDS if k in fields})
    if msg_type in ("envelope", "override"):
        fields.setdefault("reason", "thermal")
    if msg_type == "outage":
        fields.setdefault("kind", "planned")
        fields.setdefault("equipment", "feeder 55M3")
    if msg_type == "service":
        fields.setdefault("service", "peak_reduction")
    fields.setdefault("digest", repr(sorted(fields.items())))  # what the codec's content hash stands for
    return CLASSES[msg_type](id=msg_id, **fields)


class Site:
    def __init__(self, params: m.SiteParams = PARAMS, load_kw: float = 120.0,
                 devices: list[m.DeviceReading] | None = None, keep_alive: bool = True) -> None:
        self.params = params
        self.now = T0
        self.engine = Engine(params, T0)
        self.load_kw = load_kw
        if devices is None:
            devices = [pv("pv1", 225.0), pv("pv2", 135.0), battery("bess1", 200.0, 200.0)]
        self.devices = {d.id: d for d in devices}
        self.meter_online = True
        self.keep_alive = keep_alive
        self.outbound: list[Outbound] = []
        self.last: Cycle | None = None
        self.stuck: set[str] = set()
        self.reading_scale: dict[str, float] = {}

    # ---- inputs ------------------------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def send(self, msg_type: str, msg_id: str, **fields: Any) -> list[Outbound]:
        return self.receive(message(msg_type, msg_id, self.now, **fields))

    def receive(self, msg: m.Inbound | m.Invalid) -> list[Outbound]:
        out = self.engine.receive(msg, self.now)
        self.outbound += out
        return out

    def set_device(self, dev_id: str, **changes: Any) -> None:
        self.devices[dev_id] = replace(self.devices[dev_id], **changes)

    @property
    def pcc_kw(self) -> float:
        return sum(d.p_kw for d in self.devices.values()) - self.load_kw

    def meter(self) -> m.MeterReading:
        return m.MeterReading(self.pcc_kw, 0.0, 1.0, 60.0, self.meter_online, False)

    def cycle(self, seconds: float = 1.0) -> Cycle:
        """Move the clock, run one control cycle, and let the devices follow their new setpoints."""
        self.advance(seconds)
        if self.keep_alive:
            for role in m.ROLES:
                self.engine.receive(m.Heartbeat(id="hb", issuer=role, issued_at=self.now), self.now)
        scale = self.reading_scale
        readings = [replace(d, p_kw=d.p_kw * scale.get(d.id, 1.0)) for d in self.devices.values()]
        c = self.engine.cycle(self.now, self.meter(), readings)
        self.outbound += c.outbound
        for cmd in c.commands:
            d = self.devices[cmd.id]
            if cmd.id in self.stuck:
                continue
            p = max(-d.max_charge_kw, min(cmd.p_kw, d.available_kw))
            self.devices[cmd.id] = replace(d, p_kw=p if cmd.connect else 0.0, connected=cmd.connect)
        self.last = c
        return c

    def settle(self, cycles: int = 4, seconds: float = 1.0) -> Cycle:
        # 4: a rise of the load estimate counts against the export limit from the fourth cycle
        for _ in range(cycles):
            c = self.cycle(seconds)
        return c

    # ---- expectations ------------------------------------------------------------------------------------
    def responses(self, ref: str, status: str | None = None) -> list[Response]:
        return [o for o in self.outbound if isinstance(o, Response) and o.ref == ref
                and (status is None or o.status == status)]

    def told(self, out: list[Outbound], ref: str) -> tuple[str, str | None, float | None]:
        """(status, reason, accepted_kw) of the last response about `ref` in `out`."""
        r = [o for o in out if isinstance(o, Response) and o.ref == ref][-1]
        return r.status, r.reason, r.accepted_kw

    def statuses(self, ref: str) -> list[str]:
        return [r.status for r in self.responses(ref)]

    def of_type(self, cls: type) -> list[Any]:
        return [o for o in self.outbound if isinstance(o, cls)]

    def device_total(self) -> float:
        return sum(d.p_kw for d in self.devices.values())
