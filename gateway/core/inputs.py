"""The core's boundary for measurements: a reading with a value that is not a finite number is refused.

The drivers validate what they read (gateway/south), but the core does not rely on it: one NaN let in
spreads through every sum it touches (a load estimate, a hold's value, the telemetry), and a NaN
compares false with every limit, so a limit checked against it silently stops limiting. A refused device
reading counts as the device not answering (offline: its output is seen by the meter as load, which is
safe); a refused meter reading as no usable meter (no load credit: the device total stays within the PCC
limits).
"""

from __future__ import annotations

import math
from dataclasses import replace

from gateway.core.model import DeviceReading, MeterReading


def _finite(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def admit_meter(meter: MeterReading | None) -> MeterReading | None:
    if meter is None or _finite(meter.p_kw, meter.q_kvar, meter.v_pu, meter.hz, meter.p_kw_at_devices,
                                meter.load_spread_kw):
        return meter
    return None


def admit_device(d: DeviceReading) -> DeviceReading:
    if _finite(d.p_kw, d.q_kvar, d.rated_kw, d.available_kw, d.max_charge_kw, d.soc_pct, d.response_s):
        return d
    return replace(d, online=False, stale=True, p_kw=0.0, q_kvar=0.0, rated_kw=0.0, available_kw=0.0,
                   max_charge_kw=0.0, soc_pct=None)


def refused(devices: list[DeviceReading], admitted: list[DeviceReading]) -> list[str]:
    """The ids of the readings `admit_device` refused (online before, offline after)."""
    return [d.id for d, a in zip(devices, admitted, strict=True) if d.online and not a.online]
