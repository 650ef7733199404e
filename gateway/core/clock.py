"""The decision core's time: wall time for instruction windows, monotonic time for timeouts and ramps.

Instruction windows are wall time (PROTOCOL §2), so the core needs the wall clock; but a wall clock can
step. A step backwards would move a ramp the wrong way, hold off link-loss detection and, after a
restart on a box whose clock came up in the past (a flat RTC battery), make restored envelopes look
not yet started: the limits they carry would not be enforced. So:

- Timeouts and ramps (link supervision, dispatch ramps, a device's response time) count monotonic
  seconds, which never step.
- The time instruction windows are evaluated at never goes backwards: when the wall clock reads earlier
  than the core's last time plus the monotonic seconds since (by more than `JUMP_S`), the core keeps
  counting from its last time with the monotonic clock until the wall clock catches up. After a
  restart the core's last time comes from the store, so restored envelopes stay started.
- A step forwards is taken: windows are wall time, and a clock put right (NTP after a bad boot) must
  take effect. It is reported like a step back, so the app logs and audits both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.core.serde import transient

JUMP_S = 2.0  # the wall clock moved this much more, or less, than the monotonic clock: it stepped


@dataclass
class Clock:
    wall: datetime | None = None  # the core's time at its last reading (persisted: a floor after a restart)
    # The monotonic time of that reading; None before the first reading of this process.
    mono: float | None = transient(default=None)
    behind_s: float = transient(default=0.0)  # how far the wall clock is behind while it is held
    jump_s: float | None = transient(default=None)  # a step seen and not yet reported (see `take_jump`)

    def read(self, wall: datetime, mono: float) -> datetime:
        """The core's time for a wall clock reading `wall` taken at monotonic time `mono`."""
        if self.wall is None:
            self.wall, self.mono = wall, mono
            return wall
        since = 0.0 if self.mono is None else max(0.0, mono - self.mono)
        expected = self.wall + timedelta(seconds=since)
        drift = (wall - expected).total_seconds()
        if drift < -JUMP_S:  # behind: hold the core's time on the monotonic clock
            if self.behind_s == 0.0:
                self._jumped(drift)
            self.behind_s = -drift
            now = expected
        else:
            if drift > JUMP_S and self.mono is not None and self.behind_s == 0.0:
                self._jumped(drift)
            self.behind_s = 0.0
            now = max(wall, expected) if drift < 0 else wall  # never backwards, even by a slew
        self.wall, self.mono = now, mono
        return now

    def _jumped(self, seconds: float) -> None:
        self.jump_s = seconds if self.jump_s is None else self.jump_s + seconds

    def take_jump(self) -> float | None:
        """The step seen since the last call (seconds, negative = backwards), for the app to log."""
        jump, self.jump_s = self.jump_s, None
        return jump
