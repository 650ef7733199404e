"""What the gateway writes down, and when (PROTOCOL §6 restart, §8 audit, TDC-21 store-and-forward).

Every entry goes to the store's writer (`gateway.store.writer`), which writes it in its own transaction,
in the order given, off the event loop; each method returns a `Written` to await where durability matters.

- An instruction: its raw message, the core's decision and the core's new state go to disk in one
  transaction, and `app.submit` awaits it *before* any response is published, so an accepted instruction
  survives a crash and a restarted gateway never answers it twice as new (TDC-19). A market instruction
  that cannot be written is not left in force: the engine is rolled back to its state before the message,
  and the message is refused (`refused`). When the store is already known to be unwritable this happens
  at once, before anything can act on the instruction. An LDC instruction stays in force all the same, and
  its answer says it was not written down (`unwritten`): refusing a tighter limit or a trip would leave
  the feeder without it, while one lost in a crash leaves the limits written before it in force.
- A control cycle: the decision (inputs, binding limit, result) when it differs from the last one, the
  outbound messages, and the parts of the core's state that changed (`StateStore.save_engine`).
- Device writes: at the start of the next cycle, a record per write request with the points it wrote
  (the heartbeats that went through as one record), a few hundred a transaction.
- Telemetry: into the outbox first, out of it once the broker has taken it.
- A north interface's own state (Port.save_state: the 2030.5 Responses posted and still to post): a
  key-value entry, replaced whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from gateway.clocks import clocks
from gateway.core.engine import Cycle, Engine
from gateway.core.model import Inbound, Invalid
from gateway.core.outbound import Outbound, Response
from gateway.south.device import WriteRecord
from gateway.store import Store
from gateway.store.health import StoreHealth
from gateway.store.writer import InlineWriter, StoreWriter

log = logging.getLogger(__name__)

Encoded = tuple[str, bytes]  # (topic suffix, payload) as published
SETPOINTS_KEY = "setpoints"
WRITE_BATCH = 200  # write records a transaction (see Journal.writes)
AUDIT, TELEMETRY = "audit records", "telemetry messages"  # what StoreHealth counts when it is not stored


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


def _in_force(snapshot: dict[str, Any] | None) -> tuple[Any, Any]:
    """What an instruction changes when it is accepted or cancels one: the records and the seen ids."""
    store = ((snapshot or {}).get("state") or {}).get("store") or {}
    return store.get("records"), store.get("seen")


def _keep_transient(live: Any, restored: Any) -> None:
    """A rollback restores what is persisted; the fields that are not (`transient()` in
    gateway.core.serde: monotonic times, a ramp under way) belong to the running process, and stay as they
    are in `live`, nested dataclasses included."""
    if not dataclasses.is_dataclass(restored) or type(live) is not type(restored):
        return
    for f in dataclasses.fields(restored):
        if f.metadata.get("transient"):
            setattr(restored, f.name, getattr(live, f.name))
        else:
            _keep_transient(getattr(live, f.name), getattr(restored, f.name))


def unwritten(outs: list[Outbound], msg: Inbound, cause: str) -> list[Outbound]:
    """The answers to an LDC instruction kept in force although the store could not take it: its decision
    says so, and what to do."""
    note = (f"in force, but not written down: the gateway could not store it ({cause}), so it will not "
            "survive a restart of the gateway. Send it again once the gateway's status shows no store alarm")
    return [dataclasses.replace(o, detail=f"{o.detail}; {note}" if o.detail else note)
            if isinstance(o, Response) and o.ref == msg.id and o.status != "received" else o for o in outs]


def refused(msg: Inbound, at: datetime, cause: str) -> list[Outbound]:
    """The answer to an instruction the store could not take (TDC-01: received, then one decision)."""
    detail = (f"not applied: the gateway could not write it down ({cause}); it is not in force. "
              "Send it again once the gateway's status shows no store alarm")
    return [Response(msg.issuer, msg.id, msg.type, "received", at),
            Response(msg.issuer, msg.id, msg.type, "rejected", at, reason="INTERNAL_ERROR", detail=detail)]


class Written:
    """A journal entry on its way to disk: awaiting it gives True once it is there, False when the store
    could not take it; then `on_failure` runs (on the event loop), and `stands` is given instead of
    False when what was not written may stand all the same."""

    def __init__(self, future: Future, on_failure: Callable[[], None] | None = None,
                 stands: bool = False, kept: bool = False) -> None:
        self.future = future
        self.on_failure = on_failure
        self.stands = stands
        self.kept = kept  # it changed what is in force, and stays in force even if not written
        self.stored: bool | None = None  # known once awaited

    def __await__(self) -> Generator[Any, None, bool]:
        return self._wait().__await__()

    async def _wait(self) -> bool:
        # shielded: a caller cancelled while it waits (the gateway stopping) must not cancel the write
        self.stored = bool(await asyncio.shield(asyncio.wrap_future(self.future)))
        if self.stored:
            return True
        if self.on_failure is not None:
            self.on_failure()
            self.on_failure = None
        return self.stands


def _failed() -> Future:
    future: Future = Future()
    future.set_result(False)
    return future


class Journal:
    def __init__(self, store: Store, writer: StoreWriter | InlineWriter | None = None) -> None:
        self.store = store  # read on the caller's thread; written through `writer`
        self.writer = writer or InlineWriter(store)
        self.health: StoreHealth = self.writer.health
        self._writes: list[WriteRecord] = []
        self._last_decision: dict[str, Any] | None = None
        # The engine's state as last handed to the writer: what an instruction that cannot be written
        # rolls the engine back to (every change to the engine is journalled right after it is made).
        self._snapshot: dict[str, Any] | None = None

    # ---- restart ------------------------------------------------------------------------------------------
    def restore(self, engine: Engine) -> bool:
        """Bring back the core's state from the last run; True when there was one."""
        snap = self.store.state.load_engine()
        if snap is not None:
            engine.restore(snap)
        self._snapshot = engine.snapshot()
        if snap is None:
            return False
        now, mono = clocks()
        self.event("restored", now, active=list(engine.status(now, mono).active))
        return True

    # ---- instructions -----------------------------------------------------------------------------------
    def instruction(self, msg: Inbound | Invalid, source: str, outs: list[Encoded], engine: Engine,
                    at: datetime) -> Written:
        """Call it right after `engine.receive(msg)`, before anything else acts on the engine, and await
        it before publishing `outs` or acknowledging `msg` to the broker.

        True: the message, its decision and the engine's new state are on disk (committed, fsync'd), so
        what it put in force survives a crash; or it changed nothing in force (rejected, repeated, a
        heartbeat) and stands even if its record could not be written (then counted as not stored); or it
        is the LDC's and stays in force unwritten (then `kept` and not `stored`: answer with `unwritten`).
        False: a market instruction that changed what is in force and could not be written, so the engine
        has been rolled back to its state before it (`restore` must have been called first); answer it
        with `refused`. Either way, once awaited the message has its answer and may be acknowledged."""
        record: dict[str, Any] = {"source": source, "payload": _text(msg.raw)}
        if isinstance(msg, Invalid):
            record.update(role=msg.role, type=msg.msg_type, id=msg.id, invalid=msg.reason, detail=msg.detail)
        else:
            record.update(role=msg.issuer, type=msg.type, id=msg.id)
        before, snap = self._snapshot, engine.snapshot()
        self._snapshot = snap

        def job(store: Store) -> None:
            store.audit.append("inbound", at, record)
            self._outbound(store, outs, at)
            store.state.save_engine(snap)

        rollback = None
        changes = before is not None and not isinstance(msg, Invalid) and _in_force(snap) != _in_force(before)
        if changes and msg.issuer == "ldc":
            return Written(self._submit(job, audit=1 + len(outs)), stands=True, kept=True)
        if changes:
            def rollback() -> None:
                live = engine.state
                engine.restore(before)
                _keep_transient(live, engine.state)
                engine.state.clock = live.clock  # the core's time never goes back (clock.py)
                # a sign of life all the same (§6), at the time the engine received it (on the caller's
                # monotonic clock: a wall time there would read as decades of monotonic seconds)
                engine.heard(msg.issuer, at, live.clock.mono)
                self._snapshot = engine.snapshot()
            if not self.health.writable:  # refused before a control cycle can act on it
                rollback()
                self._submit(lambda store: store.audit.append("inbound", at, record), audit=1)
                return Written(_failed())
        return Written(self._submit(job, audit=1 + len(outs)), rollback, stands=rollback is None)

    def outbound(self, outs: list[Encoded], at: datetime) -> Written:
        """Messages published outside a cycle and an instruction (a refusal)."""
        return Written(self._submit(lambda store: self._outbound(store, outs, at), audit=len(outs)))

    # ---- cycles ------------------------------------------------------------------------------------------
    def on_write(self, record: WriteRecord) -> None:
        """The device drivers' write hook: kept until `writes` records them."""
        self._writes.append(record)

    def writes(self, at: datetime) -> Iterator[None]:
        """The device writes since the last call, into the audit log, `WRITE_BATCH` records a transaction.

        A large site writes thousands a cycle (~10 µs each to prepare), so this yields after each batch
        is handed to the writer: the caller lets other work run there (an instruction waiting for its
        answer).
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
            # One record per write request: its points and values in the order written, from register
            # `address` on (a 704 limit is four points in one request, then its enable).
            records = [("write", datetime.fromtimestamp(w.timestamp, UTC), {
                "device_id": w.device_id, "purpose": w.purpose, "result": w.result, "address": w.address,
                "points": [[r.point, r.raw] for r in request], "timestamp": w.timestamp})
                for request in requests[start:start + WRITE_BATCH] for w in request[:1]]
            self._submit(lambda store, records=records: self._append(store, records), audit=len(records))
            yield
        if beats:
            # Heartbeats, a write a second to every device: one record names each device and the value
            # written, instead of a thousand records a second on a large site.
            beat = [("write", at, {"purpose": "heartbeat", "point": point, "result": "ok", "devices": values})
                    for point, values in beats.items()]
            self._submit(lambda store: self._append(store, beat), audit=len(beat))

    def cycle(self, cycle: Cycle, outs: list[Encoded], engine: Engine,
              events: list[dict[str, Any]]) -> Written:
        d = cycle.decision
        decision = {
            "target_kw": round(d.target_kw, 1), "binding": d.binding,
            "export_limit_kw": round(d.export_limit_kw, 1), "export_binding": d.export_binding,
            "import_limit_kw": round(d.import_limit_kw, 1), "import_binding": d.import_binding,
            "requested_kw": round(d.requested_kw, 1), "mode": cycle.mode,
            "serving": [s.ref for s in cycle.serving],
            "commands": {c.id: [round(c.p_kw, 1), c.connect] for c in cycle.commands},
        }
        records = [("event", cycle.at, event) for event in events]
        setpoints = None
        if decision != self._last_decision:
            # the inputs that mattered: load estimate and device total, next to the limits above
            records.append(("decision", cycle.at, {
                **decision, "load_kw": None if d.load_kw is None else round(d.load_kw, 1),
                "device_total_kw": round(d.device_total_kw, 1)}))
            self._last_decision, setpoints = decision, decision["commands"]
        snap = self._snapshot = engine.snapshot()

        def job(store: Store) -> None:
            self._append(store, records)
            if setpoints is not None:
                store.state.save(SETPOINTS_KEY, setpoints)
            self._outbound(store, outs, cycle.at)
            store.state.save_engine(snap)

        future = self._submit(job, audit=len(records) + len(outs))
        future.add_done_callback(self._decision_lost)
        return Written(future)

    # ---- telemetry -----------------------------------------------------------------------------------------
    def telemetry(self, seq: int, payload: bytes) -> Written:
        """Into the outbox; False: it could not be stored (publish it live, it is counted)."""
        future = self._submit(lambda store: store.outbox.put(seq, payload), telemetry=1)
        future.add_done_callback(self._mirror_evictions)
        return Written(future)

    def telemetry_sent(self, up_to_seq: int) -> Written:
        """The broker has the outbox up to `up_to_seq`."""
        return Written(self._submit(lambda store: store.outbox.ack(up_to_seq)))

    # ---- the north interfaces' own state -------------------------------------------------------------------
    def state(self, key: str, value: Any) -> Written:
        """`value` under `key` in the store's key-value state, replacing what was there."""
        return Written(self._submit(lambda store: store.state.save(key, value)))

    def event(self, what: str, at: datetime, **detail: Any) -> Written:
        record = {"event": what, **detail}
        return Written(self._submit(lambda store: store.audit.append("event", at, record), audit=1))

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self.writer.close()

    # ---- internals --------------------------------------------------------------------------------
    def _submit(self, job: Callable[[Store], Any], audit: int = 0, telemetry: int = 0) -> Future:
        """`audit` records and `telemetry` messages: what the job holds, counted if it cannot be stored."""
        return self.writer.submit(job, Counter({AUDIT: audit, TELEMETRY: telemetry}))

    @staticmethod
    def _outbound(store: Store, outs: list[Encoded], at: datetime) -> None:
        for suffix, payload in outs:
            store.audit.append("outbound", at, {"topic": suffix, "payload": _text(payload)})

    @staticmethod
    def _append(store: Store, records: list[tuple[str, datetime, dict[str, Any]]]) -> None:
        for kind, at, record in records:
            store.audit.append(kind, at, record)

    def _decision_lost(self, future: Future) -> None:
        """A cycle that could not be written: its decision is recorded again by the next cycle."""
        if future.exception() is not None or future.result() is False:
            self._last_decision = None

    def _mirror_evictions(self, _: Future) -> None:
        """The outbox's evictions, counted on the writer's connection, where the gateway reads them."""
        if self.writer.store is not None:
            self.store.outbox.evicted = self.writer.store.outbox.evicted
