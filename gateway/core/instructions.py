"""The instruction store: accepted instructions that have not ended yet, and the ids seen per role.

An instruction is *live* from its acceptance until it completes, is superseded or is cancelled; then its
record is dropped and only its seen-id entry stays (TDC-06, and so that no instruction is answered
twice as new after a restart, TDC-19). Seen entries are kept `SEEN_RETENTION` past the end of what
they refer to: a repeat older than that is judged afresh, which for an instruction means `EXPIRED`.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from gateway.core.model import ROLES, Dispatch, Envelope, Instruction, Service

SEEN_RETENTION = timedelta(hours=24)
T = TypeVar("T")


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
    # a ramping envelope's limits just before its start, per quantity of timeline.QUANTITIES (None: no
    # limit), fixed once its ramp has begun (limits.py: what was in force then may since have ended)
    ramp_from: tuple[float | None, ...] | None = None

    @property
    def key(self) -> tuple[datetime, int]:
        """Newer instructions compare greater."""
        return (self.msg.issued_at, self.seq)

    @property
    def ref(self) -> str:
        """The source string used in `binding`, e.g. envelope:e-1."""
        return f"{self.msg.type}:{self.msg.id}"


@dataclass(frozen=True)
class Seen:
    """A message id answered with a decision; a repeat gets the same decision again."""

    json_once: ClassVar[bool] = True  # serde.to_jsonable

    type: str
    digest: str
    status: str
    reason: str | None
    accepted_kw: float | None
    detail: str | None
    keep_until: datetime | None  # None while its instruction is live


@dataclass
class Store:
    """The records (persisted: `records`, `seen`, `next_seq`) and what is derived from them.

    Every change that a decision depends on goes through `add`, `drop` or `start`, which bump `version`;
    what is computed from the records (superseded times, the limit profile, availability windows) is
    kept in `derived` until the next change, so a control cycle in which nothing changed recomputes
    nothing, and one in which something did computes each once.
    """

    records: dict[str, dict[str, Record]] = field(default_factory=lambda: {r: {} for r in ROLES})
    seen: dict[str, dict[str, Seen]] = field(default_factory=lambda: {r: {} for r in ROLES})
    next_seq: int = 0

    def __post_init__(self) -> None:
        # receipt order, kept as records come and go (a restored store is sorted once)
        self._live: dict[int, Record] = {r.seq: r for r in sorted(
            (r for by_id in self.records.values() for r in by_id.values()), key=lambda r: r.seq)}
        # when each seen id may be forgotten, earliest first, so that a cycle's prune looks only at those
        # due (an entry kept longer since is looked at then, and pushed again under its new time)
        self._expiry = [(e.keep_until, role, msg_id) for role, by_id in self.seen.items()
                        for msg_id, e in by_id.items() if e.keep_until is not None]
        heapq.heapify(self._expiry)
        self.version = 0
        self._derived: dict[Hashable, Any] = {}
        self._derived_version = 0

    def live(self) -> Iterator[Record]:
        """Every live record, oldest receipt first (a copy: the caller may add or drop meanwhile)."""
        return iter(list(self._live.values()))

    def count(self, role: str) -> int:
        """How many of `role`'s instructions are live."""
        return len(self.records[role])

    def add(self, msg: Instruction) -> Record:
        rec = Record(msg=msg, seq=self.next_seq)
        self.next_seq += 1
        self.records[msg.issuer][msg.id] = rec
        self._live[rec.seq] = rec
        self.version += 1
        return rec

    def start(self, rec: Record, hold_kw: float | None) -> None:
        """The instruction has taken effect; a hold with the export cap it keeps from now on."""
        rec.started = True
        rec.hold_kw = hold_kw
        self.version += 1

    def pin_ramp(self, rec: Record, ramp_from: tuple[float | None, ...]) -> None:
        rec.ramp_from = ramp_from
        self.version += 1

    def remember(self, role: str, msg_id: str, entry: Seen) -> None:
        self.seen[role][msg_id] = entry
        if entry.keep_until is not None:
            heapq.heappush(self._expiry, (entry.keep_until, role, msg_id))

    def drop(self, rec: Record, now: datetime) -> None:
        """The instruction has ended: forget the record, keep its id for a while."""
        del self.records[rec.msg.issuer][rec.msg.id]
        del self._live[rec.seq]
        self.version += 1
        entry = self.seen[rec.msg.issuer].get(rec.msg.id)
        if entry is not None:  # replaced, not changed: frozen, so that its JSON is made once (serde.py)
            self.remember(rec.msg.issuer, rec.msg.id, replace(
                entry, keep_until=max(entry.keep_until or now, now + SEEN_RETENTION)))

    def prune(self, now: datetime) -> None:
        """Forget the seen ids whose time has passed: O(log n) for each one due, nothing for the rest."""
        while self._expiry and self._expiry[0][0] < now:
            _, role, msg_id = heapq.heappop(self._expiry)
            entry = self.seen[role].get(msg_id)
            if entry is not None and entry.keep_until is not None and entry.keep_until < now:
                del self.seen[role][msg_id]

    def derived(self, key: Hashable, make: Callable[[], T]) -> T:
        """`make()`, computed once per version of the records."""
        if self._derived_version != self.version:
            self._derived.clear()
            self._derived_version = self.version
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]


def covers(msg: Instruction, t: datetime) -> bool:
    """Whether the instruction's half-open window [start, end) contains t (a default envelope has none)."""
    start = getattr(msg, "start", None)
    end = getattr(msg, "end", None)
    return start is not None and start <= t and (end is None or t < end)


def superseded_from(store: Store) -> dict[int, datetime]:
    """When each superseded live record (by seq) stops being in force; computed once per store version.

    An envelope is superseded once an envelope naming it in `replaces` has started. A dispatch (or a
    service) is superseded once a newer one whose window overlaps it has started (TDC-14): the older one
    ends there as a whole, it does not resume after the newer one, because IESO's newer dispatch is the
    current instruction for the resource.
    """
    return store.derived("superseded", lambda: _superseded(store))


def _superseded(store: Store) -> dict[int, datetime]:
    out: dict[int, datetime] = {}
    targets: dict[str, list[Record]] = {"dispatch": [], "service": []}
    for rec in store.live():
        msg = rec.msg
        if isinstance(msg, Envelope) and msg.replaces is not None:
            replaced = store.records["ldc"].get(msg.replaces)
            if replaced is not None and replaced.msg.type == "envelope":
                out[replaced.seq] = min(out.get(replaced.seq, msg.start), msg.start)
        elif isinstance(msg, Dispatch | Service):
            targets[msg.type].append(rec)
    for group in targets.values():
        out.update(_overlapped(group))
    return out


def _overlapped(group: list[Record]) -> dict[int, datetime]:
    """For each record, the earliest start among the newer ones whose window overlaps its own.

    Newest first, each record asks which of the newer ones already seen end after it starts (an index over
    their ends, keeping the least start): the least of those starts is the answer if it is before the
    record's own end, and no newer one overlaps otherwise. O(n log n) instead of every pair.
    """
    ends = sorted({r.msg.end for r in group})
    least = _SuffixMin(len(ends))
    out: dict[int, datetime] = {}
    for rec in sorted(group, key=lambda r: r.key, reverse=True):
        msg = rec.msg
        first = least.query(bisect_right(ends, msg.start))  # among newer ones ending after its start
        if first is not None and first < msg.end:
            out[rec.seq] = first
        least.update(bisect_left(ends, msg.end), msg.start)
    return out


class _SuffixMin:
    """The least value at positions ≥ i of n positions, values only ever lowered (a Fenwick tree)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tree: list[datetime | None] = [None] * (n + 1)

    def update(self, i: int, value: datetime) -> None:
        j = self.n - i  # position i counted from the end, 1-based
        while j <= self.n:
            current = self.tree[j]
            if current is None or value < current:
                self.tree[j] = value
            j += j & -j

    def query(self, i: int) -> datetime | None:
        best: datetime | None = None
        j = self.n - i
        while j > 0:
            current = self.tree[j]
            if current is not None and (best is None or current < best):
                best = current
            j -= j & -j
        return best


def in_force(rec: Record, t: datetime, superseded: dict[int, datetime]) -> bool:
    return covers(rec.msg, t) and not (rec.seq in superseded and superseded[rec.seq] <= t)
