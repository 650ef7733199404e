"""What the MQTT link has to publish and the broker has not acknowledged yet, in order (no I/O).

Answers and status are queued here by the app and never awaited: the link hands them to paho in queue
order (so a batch queued whole is never interleaved with another, TDC-01) and drops each once the
broker acknowledges it. What a lost connection leaves unacknowledged goes again, first and in order, on
the next one; a subscriber may then see a message twice, never miss one. The queue is bounded: past
`max_messages` the oldest message is dropped and counted (the app raises an alarm). A retained message
marked `coalesce` replaces an older one on its topic that the broker has not acknowledged: only the
newest `status` matters.

Messages queued with `keep` off (telemetry, which its own outbox keeps, TDC-21) are given up when the
connection is lost, and their `on_settled` says so (False); it says True when the broker acknowledged.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class Outgoing:
    suffix: str  # topic under the site prefix
    payload: bytes
    retain: bool = False
    coalesce: bool = False  # only the newest not yet acknowledged on this topic is sent
    keep: bool = True  # kept across a lost connection until acknowledged
    on_settled: Callable[[bool], None] | None = None  # acknowledged (True) or given up (False)
    serial: int = field(default=0, init=False)
    gone: bool = field(default=False, init=False)  # acknowledged, given up, dropped or replaced


class OutgoingQueue:
    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self.dropped = 0  # the oldest messages dropped because the queue was full, since the start
        self._serials = itertools.count(1)
        self._live: dict[int, Outgoing] = {}  # every message not settled, in queue order
        self._waiting: deque[Outgoing] = deque()  # not handed to the connection yet (some may be gone)
        self._handed: dict[int, Outgoing] = {}  # by the connection's message id
        self._newest: dict[str, Outgoing] = {}  # the coalescing message in the queue, by topic

    @property
    def depth(self) -> int:
        """Messages not acknowledged yet."""
        return len(self._live)

    def put(self, msg: Outgoing) -> None:
        msg.serial = next(self._serials)
        if msg.coalesce:
            older = self._newest.get(msg.suffix)
            if older is not None:
                self._settle(older, False)
            self._newest[msg.suffix] = msg
        self._live[msg.serial] = msg
        self._waiting.append(msg)
        while len(self._live) > self.max_messages:
            self._settle(next(iter(self._live.values())), False)
            self.dropped += 1

    def waiting(self) -> bool:
        """Whether something is still to be handed to the connection."""
        while self._waiting and self._waiting[0].gone:
            self._waiting.popleft()
        return bool(self._waiting)

    def take(self) -> Iterator[Outgoing]:
        """The messages to hand to the connection, in order; one it cannot take goes back (`put_back`),
        and the taking stops there."""
        while self.waiting():
            yield self._waiting.popleft()

    def put_back(self, msg: Outgoing) -> None:
        """A message taken but not handed: the first to go when the connection can take more."""
        self._waiting.appendleft(msg)

    def handed(self, msg: Outgoing, mid: int) -> None:
        self._handed[mid] = msg

    def acknowledged(self, mid: int) -> None:
        msg = self._handed.pop(mid, None)
        if msg is not None and not msg.gone:
            self._settle(msg, True)

    def connection_lost(self) -> None:
        """What was not acknowledged goes again on the next connection, in order; `keep` off is given up."""
        self._handed.clear()
        for msg in [m for m in self._live.values() if not m.keep]:
            self._settle(msg, False)
        self._waiting = deque(self._live.values())

    def _settle(self, msg: Outgoing, acknowledged: bool) -> None:
        msg.gone = True
        del self._live[msg.serial]
        if self._newest.get(msg.suffix) is msg:
            del self._newest[msg.suffix]
        if msg.on_settled is not None:
            msg.on_settled(acknowledged)
