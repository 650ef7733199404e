"""What the gateway writes down, and when (PROTOCOL §6 restart, §8 audit, TDC-21 store-and-forward).

- An instruction: its raw message, the core's decision and the core's new state go to disk in one
  transaction *before* any response is published, so an accepted instruction survives a crash and a
  restarted gateway never answers it twice as new (TDC-19).
- A control cycle: the decision (inputs, binding limit, result) when it differs from the last one, the
  outbound messages, and the core's state when it changed.
- Device writes: at the start of the next cycle, a record per write request with the points it wrote
  (the heartbeats that went through as one record), a few hundred a transaction.
- Telemetry: into the outbox first, out of it once the broker has taken it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from gateway.clocks import clocks
from gateway.core.engine import Cycle, Engine
from gateway.core.model import Inbound, Invalid
from gateway.south.device import WriteRecord
from gateway.store import Store

log = logging.getLogger(__name__)

Encoded = tuple[str, bytes]  # (topic suffix, payload) as published
ENGINE_KEY = "engine"
SETPOINTS_KEY = "setpoints"
WRITE_BATCH = 200  # write records a transaction (see Journal.writes)


def _requests(writes: list[WriteRecord]) -> list[list[WriteRecord]]:
    """The points of one write request together: a driver records them one after the other, with the
    request's time."""
    requests: list[list[WriteRecord]] = []
    last: WriteRecord | None = None
    for w in writes:
        if last is not None and w.timestamp == last.timestamp and w.device_id == last.device_id:
            requests[-1].append(w)
        else:
            requests.append([w])
            last = w
    return requests


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._writes: list[WriteRecord] = []
        self._last_decision: dict[str, Any] | None = None
        self._last_state: str | None = None

    # ---- restart ------------------------------------------------------------------------------------------
    def restore(self, engine: Engine) -> bool:
        """Bring back the core's state from the last run; True when there was one."""
        snap = self.store.state.load(ENGINE_KEY)
        if snap is None:
            return False
        engine.restore(snap)
        self._last_state = json.dumps(snap, sort_keys=True)
        now, mono = clocks()
        self.event("restored", now, active=list(engine.status(now, mono).active))
        return True

    # ---- instructions -----------------------------------------------------------------------------------
    def instruction(self, msg: Inbound | Invalid, source: str, outs: list[Encoded], engine: Engine,
                    at: datetime) -> None:
        record: dict[str, Any] = {"source": source, "payload": _text(msg.raw)}
        if isinstance(msg, Invalid):
            record.update(role=msg.role, type=msg.msg_type, id=msg.id, invalid=msg.reason, detail=msg.detail)
        else:
            record.update(role=msg.issuer, type=msg.type, id=msg.id)
        with self.store.transaction():
            self.store.audit.append("inbound", at, record)
            self._outbound(outs, at)
            self._save_state(engine)

    # ---- cycles ------------------------------------------------------------------------------------------
    def on_write(self, record: WriteRecord) -> None:
        """The device drivers' write hook: kept until `writes` records them."""
        self._writes.append(record)

    def writes(self, at: datetime) -> Iterator[None]:
        """The device writes since the last call, into the audit log, `WRITE_BATCH` records a transaction.

        A large site writes thousands a cycle (~10 µs each to record), so this yields after each
        transaction: the caller lets other work run there (an instruction waiting for its answer).
        """
        writes, self._writes = self._writes, []
        requests: list[list[WriteRecord]] = []
        beats: dict[str, dict[str, Any]] = {}
        for request in _requests(writes):
            if request[0].purpose == "heartbeat" and request[0].result == "ok":
                for b in request:
                    beats.setdefault(b.point, {})[b.device_id] = b.raw
            else:
                requests.append(request)
        for start in range(0, len(requests), WRITE_BATCH):
            with self.store.transaction():
                for request in requests[start:start + WRITE_BATCH]:
                    # One record per write request: its points and values in the order written, from
                    # register `address` on (a 704 limit is four points in one request, then its enable).
                    w = request[0]
                    self.store.audit.append("write", datetime.fromtimestamp(w.timestamp, UTC), {
                        "device_id": w.device_id, "purpose": w.purpose, "result": w.result,
                        "address": w.address, "points": [[r.point, r.raw] for r in request],
                        "timestamp": w.timestamp})
            yield
        if beats:
            # Heartbeats, a write a second to every device: one record names each device and the value
            # written, instead of a thousand records a second on a large site.
            with self.store.transaction():
                for point, values in beats.items():
                    self.store.audit.append("write", at, {"purpose": "heartbeat", "point": point,
                                                          "result": "ok", "devices": values})

    def cycle(self, cycle: Cycle, outs: list[Encoded], engine: Engine, events: list[dict[str, Any]]) -> None:
        d = cycle.decision
        decision = {
            "target_kw": round(d.target_kw, 1), "binding": d.binding,
            "export_limit_kw": round(d.export_limit_kw, 1), "export_binding": d.export_binding,
            "import_limit_kw": round(d.import_limit_kw, 1), "import_binding": d.import_binding,
            "requested_kw": round(d.requested_kw, 1), "mode": cycle.mode,
            "serving": [s.ref for s in cycle.serving],
            "commands": {c.id: [round(c.p_kw, 1), c.connect] for c in cycle.commands},
        }
        with self.store.transaction():
            for event in events:
                self.store.audit.append("event", cycle.at, event)
            if decision != self._last_decision:
                # the inputs that mattered: load estimate and device total, next to the limits above
                self.store.audit.append("decision", cycle.at, {
                    **decision, "load_kw": None if d.load_kw is None else round(d.load_kw, 1),
                    "device_total_kw": round(d.device_total_kw, 1)})
                self._last_decision = decision
                self.store.state.save(SETPOINTS_KEY, decision["commands"])
            self._outbound(outs, cycle.at)
            self._save_state(engine)

    # ---- telemetry -----------------------------------------------------------------------------------------
    def telemetry(self, seq: int, payload: bytes) -> None:
        with self.store.transaction():
            self.store.outbox.put(seq, payload)

    def event(self, what: str, at: datetime, **detail: Any) -> None:
        with self.store.transaction():
            self.store.audit.append("event", at, {"event": what, **detail})

    # ---- internals --------------------------------------------------------------------------------
    def _outbound(self, outs: list[Encoded], at: datetime) -> None:
        for suffix, payload in outs:
            self.store.audit.append("outbound", at, {"topic": suffix, "payload": _text(payload)})

    def _save_state(self, engine: Engine) -> None:
        snap = engine.snapshot()
        text = json.dumps(snap, sort_keys=True)
        if text != self._last_state:
            self.store.state.save(ENGINE_KEY, snap)
            self._last_state = text
