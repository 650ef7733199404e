"""The status page's chart data: PCC power, the limits and the target of the last hour, a point per cycle.

Fed by a cycle listener. Cycles run every control interval and also at once on every instruction, so
the deque's maximum length (twice the cycles of an hour) is only the memory bound; the hour itself is
kept by dropping points older than the span.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from gateway.core.engine import Cycle
from gateway.core.model import DeviceReading, MeterReading

SPAN_S = 3600.0
SERIES = ("pcc_kw", "target_kw", "export_limit_kw", "import_limit_kw")


@dataclass(frozen=True, slots=True)
class Point:
    t: float  # UTC epoch seconds of the cycle, to the millisecond: as sent, so `since` compares exactly
    pcc_kw: float | None  # None without a usable meter reading
    target_kw: float
    export_limit_kw: float
    import_limit_kw: float  # as a magnitude: the PCC may go down to −import_limit_kw


def finite(x: float | None) -> float | None:
    """JSON has no infinity: a limit that limits nothing is sent as null."""
    return None if x is None or not math.isfinite(x) else round(x, 2)


def metered_pcc_kw(meter: MeterReading | None) -> float | None:
    """The PCC power when the meter's reading can be used (online and fresh), as the core uses it."""
    return meter.p_kw if meter is not None and meter.online and not meter.stale else None


class History:
    def __init__(self, control_interval_s: float, span_s: float = SPAN_S) -> None:
        self.span_s = span_s
        self._points: deque[Point] = deque(maxlen=2 * math.ceil(span_s / control_interval_s))

    def on_cycle(self, cycle: Cycle, meter: MeterReading | None, devices: list[DeviceReading]) -> None:
        d = cycle.decision
        t = round(cycle.at.timestamp(), 3)
        self._points.append(Point(t, metered_pcc_kw(meter), d.target_kw, d.export_limit_kw,
                                  d.import_limit_kw))
        while self._points and self._points[0].t < t - self.span_s:
            self._points.popleft()

    def __len__(self) -> int:
        return len(self._points)

    def since(self, t: float) -> dict[str, list[float | None]]:
        """The points after `t`, column by column (`t` and each of SERIES): compact to send every poll."""
        points = [p for p in self._points if p.t > t]
        columns: dict[str, list[float | None]] = {"t": [p.t for p in points]}
        for name in SERIES:
            columns[name] = [finite(getattr(p, name)) for p in points]
        return columns
