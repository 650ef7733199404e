"""Which north interface may say what for the LDC (`[ldc]` of the site file): one LDC is one role,
whichever protocol its instructions come by.

Limits and trips from every listed interface go to the core together, where the most restrictive wins, so a
limit that arrives by two is applied once. What replaces instead of adding has one source: the default
envelope comes only by the interface `[ldc] default_envelope` names, and an instruction received by
2030.5 (its id starts `sep2:`) is cancelled or replaced only by 2030.5. A plain function of the message.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.model import Cancel, DefaultEnvelope, Envelope, Inbound, Invalid

NAMES = {"mqtt": "MQTT", "scada": "DNP3 SCADA", "sep2": "IEEE 2030.5"}
SEP2_PREFIX = "sep2:"


def _owner(msg_id: str) -> str | None:
    return "sep2" if msg_id.startswith(SEP2_PREFIX) else None


def check(msg: Inbound | Invalid, source: str, interfaces: Sequence[str],
          default_source: str | None) -> Inbound | Invalid:
    """The message, or what it becomes when `source` may not say it: rejected UNAUTHORIZED, with why."""
    if isinstance(msg, Invalid) or msg.issuer != "ldc":
        return msg
    problem = None
    if source not in interfaces:
        problem = (f"the LDC's instructions come by {', '.join(NAMES[i] for i in interfaces)} on this site, "
                   f"not by {NAMES[source]} (site file: [ldc] interfaces)")
    elif isinstance(msg, DefaultEnvelope) and default_source not in (None, source):
        problem = (f"the LDC's default envelope comes by {NAMES[default_source]} on this site, not by "
                   f"{NAMES[source]} (site file: [ldc] default_envelope)")
    else:
        refs = [msg.id]
        if isinstance(msg, Cancel):
            refs.append(msg.ref)
        elif isinstance(msg, Envelope) and msg.replaces:
            refs.append(msg.replaces)
        for ref in refs:
            owner = _owner(ref)
            if owner is not None and owner != source:
                problem = (f"{ref!r} belongs to the LDC's {NAMES[owner]} interface: only it can issue, "
                           "cancel or replace it")
                break
    if problem is None:
        return msg
    return Invalid(role="ldc", msg_type=msg.type, id=msg.id, reason="UNAUTHORIZED", detail=problem,
                   raw=msg.raw)
