"""The instruction store: accepted instructions that have not ended yet, and the ids seen per role.

An instruction is *live* from its acceptance until it completes, is superseded or is cancelled; then its
record is dropped and only its seen-id entry stays (TDC-06, and so that no instruction is answered
twice as new after a restart, TDC-19). Seen entries are kept `SEEN_RETENTION` past the end of what
they refer to: a repeat older than that is judged afresh, which for an instruction means `EXPIRED`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.core.model import ROLES, Dispatch, Envelope, Instruction, Service

SEEN_RETENTION = timedelta(hours=24)


@dataclass
class Assessment:
    """What can be delivered of a dispatch or service, as last told to its issuer."""

    status: str  # accepted | constrained
    accepted_kw: float
    reason: str | None
    binding: str
    start: datetime  # the part of the window this assessment is about
    end: datetime


@dataclass
class Record:
    msg: Instruction
    seq: int  # receipt order: breaks ties between equal issued_at
    started: bool = False
    hold_kw: float | None = None  # a hold's export cap, fixed by the first cycle it is in force
    assessment: Assessment | None = None  # dispatch and service only

    @property
    def key(self) -> tuple[datetime, int]:
        """Newer instructions compare greater."""
        return (self.msg.issued_at, self.seq)

    @property
    def ref(self) -> str:
        """The source string used in `binding`, e.g. envelope:e-1."""
        return f"{self.msg.type}:{self.msg.id}"


@dataclass
class Seen:
    """A message id answered with a decision; a repeat gets the same decision again."""

    type: str
    digest: str
    status: str
    reason: str | None
    accepted_kw: float | None
    detail: str | None
    keep_until: datetime | None  # None while its instruction is live


@dataclass
class Store:
    records: dict[str, dict[str, Record]] = field(default_factory=lambda: {r: {} for r in ROLES})
    seen: dict[str, dict[str, Seen]] = field(default_factory=lambda: {r: {} for r in ROLES})
    next_seq: int = 0

    def live(self) -> Iterator[Record]:
        """Every live record, oldest receipt first."""
        return iter(sorted((r for by_id in self.records.values() for r in by_id.values()),
                           key=lambda r: r.seq))

    def add(self, msg: Instruction) -> Record:
        rec = Record(msg=msg, seq=self.next_seq)
        self.next_seq += 1
        self.records[msg.issuer][msg.id] = rec
        return rec

    def remember(self, role: str, msg_id: str, entry: Seen) -> None:
        self.seen[role][msg_id] = entry

    def drop(self, rec: Record, now: datetime) -> None:
        """The instruction has ended: forget the record, keep its id for a while."""
        del self.records[rec.msg.issuer][rec.msg.id]
        entry = self.seen[rec.msg.issuer].get(rec.msg.id)
        if entry is not None:
            entry.keep_until = max(entry.keep_until or now, now + SEEN_RETENTION)

    def prune(self, now: datetime) -> None:
        for by_id in self.seen.values():
            for msg_id in [i for i, e in by_id.items() if e.keep_until is not None and e.keep_until < now]:
                del by_id[msg_id]


def covers(msg: Instruction, t: datetime) -> bool:
    """Whether the instruction's half-open window [start, end) contains t (a default envelope has none)."""
    start = getattr(msg, "start", None)
    end = getattr(msg, "end", None)
    return start is not None and start <= t and (end is None or t < end)


def superseded_from(store: Store) -> dict[int, datetime]:
    """When each superseded live record (by seq) stops being in force; computed once per decision.

    An envelope is superseded once an envelope naming it in `replaces` has started. A dispatch (or a
    service) is superseded once a newer one whose window overlaps it has started (TDC-14): the older one
    ends there as a whole, it does not resume after the newer one, because IESO's newer dispatch is the
    current instruction for the resource.
    """
    out: dict[int, datetime] = {}

    def supersede(rec: Record, at: datetime) -> None:
        out[rec.seq] = min(out.get(rec.seq, at), at)

    targets: list[Record] = []
    for rec in store.live():
        msg = rec.msg
        if isinstance(msg, Envelope) and msg.replaces is not None:
            replaced = store.records["ldc"].get(msg.replaces)
            if replaced is not None and replaced.msg.type == "envelope":
                supersede(replaced, msg.start)
        elif isinstance(msg, Dispatch | Service):
            targets.append(rec)
    for older in targets:
        for newer in targets:
            o, n = older.msg, newer.msg
            if o.type == n.type and newer.key > older.key and n.start < o.end and o.start < n.end:
                supersede(older, n.start)
    return out


def in_force(rec: Record, t: datetime, superseded: dict[int, datetime]) -> bool:
    return covers(rec.msg, t) and not (rec.seq in superseded and superseded[rec.seq] <= t)
