"""Communication supervision (PROTOCOL §6): a role is `lost` when nothing valid has come from it for
`comms_timeout_s`.

Any message that passes the wire schema counts as a sign of life, even one the engine then rejects
(e.g. EXPIRED): it proves the link works. Invalid payloads do not count. The clock starts when the
engine is created.

The timeout counts monotonic seconds (see clock.py), so a wall clock that steps neither hides a lost
link nor loses a live one. The wall time each role was last heard is kept too, and persisted: a gateway
restarted after being down longer than the timeout starts with the link `lost` (and the default
envelope) until the role is heard again; the monotonic times are rebuilt from it on the first question
after the restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.core.model import ROLES
from gateway.core.serde import transient


@dataclass
class Supervision:
    last_valid: dict[str, datetime] = field(default_factory=dict)  # wall time (the core's) last heard
    heard_mono: dict[str, float] = transient(default_factory=dict)  # monotonic time last heard

    @classmethod
    def starting(cls, now: datetime) -> Supervision:
        return cls({role: now for role in ROLES})

    def heard(self, role: str, now: datetime, mono: float) -> None:
        self.last_valid[role] = max(self.last_valid[role], now)
        self.heard_mono[role] = mono

    def state(self, role: str, now: datetime, mono: float, timeout_s: float) -> str:
        if role not in self.heard_mono:  # first question since a start or restore
            self.heard_mono[role] = mono - max(0.0, (now - self.last_valid[role]).total_seconds())
        return "lost" if mono - self.heard_mono[role] >= timeout_s else "ok"
