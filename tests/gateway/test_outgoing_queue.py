"""The MQTT link's outgoing queue as plain functions (gateway.north.outgoing): order, what a lost
connection leaves to resend, the bound, and the coalesced status."""

from __future__ import annotations

from typing import Any

from gateway.north.outgoing import Outgoing, OutgoingQueue


def msg(n: int, **kw: Any) -> Outgoing:
    return Outgoing("gateway/response/ldc", str(n).encode(), **kw)


def hand_all(q: OutgoingQueue, first_mid: int = 1) -> list[bytes]:
    handed = []
    for mid, m in enumerate(q.take(), first_mid):
        q.handed(m, mid)
        handed.append(m.payload)
    return handed


def test_messages_go_in_order_and_leave_once_acknowledged() -> None:
    q = OutgoingQueue(100)
    for n in range(3):
        q.put(msg(n))
    assert hand_all(q) == [b"0", b"1", b"2"]
    assert not q.waiting() and q.depth == 3
    q.acknowledged(1)
    q.acknowledged(2)
    assert q.depth == 1


def test_a_lost_connection_resends_what_was_not_acknowledged_first_and_in_order() -> None:
    q = OutgoingQueue(100)
    for n in range(3):
        q.put(msg(n))
    hand_all(q)
    q.acknowledged(1)
    q.put(msg(3))  # queued while the connection is going
    q.connection_lost()
    assert hand_all(q, first_mid=1) == [b"1", b"2", b"3"]  # the new connection numbers from 1 again
    q.acknowledged(1)
    q.connection_lost()
    assert hand_all(q) == [b"2", b"3"]


def test_a_message_paho_refuses_goes_back_to_the_front() -> None:
    q = OutgoingQueue(100)
    for n in range(3):
        q.put(msg(n))
    taken = q.take()
    first = next(taken)
    q.put_back(first)
    assert hand_all(q) == [b"0", b"1", b"2"]


def test_past_the_bound_the_oldest_are_dropped_and_counted() -> None:
    q = OutgoingQueue(10)
    for n in range(15):
        q.put(msg(n))
    assert q.dropped == 5 and q.depth == 10
    assert hand_all(q) == [str(n).encode() for n in range(5, 15)]


def test_a_dropped_message_that_paho_already_has_is_not_sent_again() -> None:
    q = OutgoingQueue(10)
    q.put(msg(0))
    hand_all(q)
    for n in range(1, 11):
        q.put(msg(n))
    assert q.dropped == 1
    q.acknowledged(1)  # the dropped one's acknowledgement changes nothing
    assert q.depth == 10
    q.connection_lost()
    assert hand_all(q) == [str(n).encode() for n in range(1, 11)]


def test_only_the_newest_coalesced_status_goes() -> None:
    q = OutgoingQueue(100)

    def status(n: int) -> Outgoing:
        return Outgoing("gateway/status", str(n).encode(), retain=True, coalesce=True)

    q.put(status(0))
    q.put(msg(1))
    q.put(status(2))
    assert hand_all(q) == [b"1", b"2"]
    q.put(status(3))  # status 2 is with paho, not acknowledged: 3 replaces it for a resend
    q.connection_lost()
    assert hand_all(q) == [b"1", b"3"]
    assert q.dropped == 0


def test_messages_not_kept_are_given_up_when_the_connection_is_lost() -> None:
    q = OutgoingQueue(100)
    outcome: list[tuple[int, bool]] = []
    for n in range(3):
        q.put(msg(n, keep=n != 1, on_settled=lambda ok, n=n: outcome.append((n, ok))))
    hand_all(q)
    q.acknowledged(1)
    q.connection_lost()
    assert outcome == [(0, True), (1, False)]
    assert hand_all(q) == [b"2"]
