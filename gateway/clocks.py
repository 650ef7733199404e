"""The two clocks the gateway reads, always together: the wall clock (UTC) for instruction windows and the
monotonic clock for timeouts and ramps. Every call into the decision core passes both (gateway/core/clock.py
says why), so that a wall clock that steps moves no ramp and hides no lost link."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def clocks() -> tuple[datetime, float]:
    return datetime.now(UTC), time.monotonic()
