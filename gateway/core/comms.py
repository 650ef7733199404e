"""Communication supervision (PROTOCOL §6): a role is `lost` when nothing valid has come from it for
`comms_timeout_s`.

Any message that passes the wire schema counts as a sign of life, even one the engine then rejects
(e.g. EXPIRED): it proves the link works. Invalid payloads do not count. The clock starts when the
engine is created; the last-seen times are part of the persisted state, so a gateway that was down longer
than the timeout starts with the link `lost` (and the default envelope) until the role is heard again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.core.model import ROLES


@dataclass
class Supervision:
    last_valid: dict[str, datetime] = field(default_factory=dict)

    @classmethod
    def starting(cls, now: datetime) -> Supervision:
        return cls({role: now for role in ROLES})

    def heard(self, role: str, now: datetime) -> None:
        self.last_valid[role] = max(self.last_valid[role], now)

    def state(self, role: str, now: datetime, timeout_s: float) -> str:
        return "lost" if (now - self.last_valid[role]).total_seconds() >= timeout_s else "ok"
