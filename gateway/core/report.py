"""Telemetry content (PROTOCOL §4), built from a Cycle and the readings; the app adds seq and time.

available_up_kw / available_down_kw are what the controllable devices could still add / shed now
(physics only: limits are published on `availability`); soc_pct is the batteries' mean weighted by
rated power. Site values are None without a usable meter reading.
"""

from __future__ import annotations

from datetime import datetime

from gateway.core.allocation import controllable
from gateway.core.engine import Cycle
from gateway.core.model import DeviceReading, MeterReading
from gateway.core.outbound import DeviceTelemetry, Effective, SiteTelemetry, Telemetry


def telemetry(site_id: str, seq: int, at: datetime, cycle: Cycle, meter: MeterReading | None,
              devices: list[DeviceReading]) -> Telemetry:
    m = meter if meter is not None and meter.online and not meter.stale else None
    ctrl = controllable(devices)
    up = sum(max(0.0, d.available_kw - d.p_kw) for d in ctrl)
    down = sum(max(0.0, d.p_kw + (d.max_charge_kw if d.kind == "battery" else 0.0)) for d in ctrl)
    batteries = [d for d in ctrl if d.kind == "battery" and d.soc_pct is not None and d.rated_kw > 0]
    rated = sum(d.rated_kw for d in batteries)
    soc = sum((d.soc_pct or 0.0) * d.rated_kw for d in batteries) / rated if batteries else None
    d = cycle.decision
    setpoints = {c.id: c.p_kw for c in cycle.commands}
    return Telemetry(
        site_id=site_id, seq=seq, at=at,
        site=SiteTelemetry(m.p_kw if m else None, m.q_kvar if m else None, m.v_pu if m else None,
                           m.hz if m else None, up, down, soc),
        effective=Effective(d.target_kw, d.export_limit_kw, d.import_limit_kw, d.binding, cycle.mode),
        serving=tuple(cycle.serving),
        devices=tuple(DeviceTelemetry(x.id, x.online, x.stale, x.p_kw, x.q_kvar, setpoints.get(x.id),
                                      x.soc_pct, x.id not in cycle.not_following) for x in devices),
    )

