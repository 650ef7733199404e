"""The gateway's MQTT link against a real mosquitto: how it hands a batch of answers to the socket, and
what it does with what it queued while the broker is away or stops answering.

The link hands a batch to paho and has paho write it in the caller's turn, and registers paho's
socket writer in the turn paho asks for it. These tests hold the invariant that makes that safe: the
loop has a writer on the link's socket exactly while paho has something to write, also when a write
fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from paho.mqtt.matcher import MQTTMatcher

from gateway.config import MqttSection
from gateway.north.mqtt import Inbound, MqttLink, MqttPeer, Redeliver, _Matcher
from gateway.north.outgoing import Outgoing
from simulators.mosquitto import Mosquitto

pytestmark = pytest.mark.asyncio


async def _nothing() -> None:
    return None


@contextlib.asynccontextmanager
async def _connected(broker: Mosquitto,
                     **mqtt: Any) -> AsyncIterator[tuple[MqttLink, MqttPeer, socket.socket]]:
    """A running link, connected, with a peer that hears what it publishes, and the link's socket."""
    link = _link(broker, **mqtt)
    runner = asyncio.create_task(link.run())
    try:
        async with MqttPeer(broker.url) as peer:
            await peer.subscribe("tdc/v1/site-1/gateway/#")
            await asyncio.wait_for(link.connected.wait(), 10)
            assert link._client is not None
            sock = link._client._client.socket()
            assert isinstance(sock, socket.socket)
            yield link, peer, sock
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def _link(broker: Mosquitto, **mqtt: Any) -> MqttLink:
    cfg = MqttSection(broker=broker.url, reconnect_max_s=0.5, **mqtt)
    return MqttLink(cfg, "site-1", lambda _m: _nothing(), lambda: None, lambda: b"{}")


def _answers(first: int, n: int) -> list[Outgoing]:
    return [Outgoing("gateway/response/ldc", json.dumps({"n": i}).encode()) for i in range(first, first + n)]


def _heard(peer: MqttPeer) -> list[int]:
    """The numbers the peer heard, each once, in the order first heard (after an outage a message the
    broker took before the link gave up on it is sent again: at least once, never lost)."""
    seen: list[int] = []
    for _, p, _ in peer.messages:
        n = json.loads(p).get("n")
        if n is not None and n not in seen:
            seen.append(n)
    return seen


def _batch(first: int, n: int) -> list[tuple[str, bytes, bool]]:
    return [("gateway/telemetry", json.dumps({"n": i}).encode(), False) for i in range(first, first + n)]


def _has_writer(fd: int) -> bool:
    """Whether the loop watches fd for writing (removing it to see, then nothing else runs)."""
    return asyncio.get_running_loop().remove_writer(fd)


async def test_a_batch_goes_out_in_order_and_leaves_no_writer_on_the_loop(broker: Mosquitto) -> None:
    # A writer left on a socket that is always writable would wake the loop on every turn (the gateway
    # at 100 % of a core, seen when paho's writer was registered a turn after the batch was written).
    async with _connected(broker) as (link, peer, sock):
        assert await link.publish_many(_batch(0, 5)) == [True] * 5
        await peer.wait_for(lambda _t, p: json.loads(p) == {"n": 4}, timeout=5)
        assert [json.loads(p)["n"] for _, p, _ in peer.messages] == [0, 1, 2, 3, 4]
        for _ in range(5):
            await asyncio.sleep(0)  # turns enough for any writer registered late
        assert not _has_writer(sock.fileno()), "a writer was left behind"


async def test_a_batch_whose_write_fails_leaves_no_writer_and_the_link_comes_back(broker: Mosquitto) -> None:
    # The batch's write meets a socket that can no longer send. paho closes it in that write; a writer
    # registered after that would sit on a closed descriptor, or on whichever socket is given its number
    # next, taking over that socket's writer (a connect that never completes).
    async with _connected(broker) as (link, peer, sock):
        fd = sock.fileno()
        # Turn by turn (the loop runs callbacks first in, first out): publish_many's first step hands the
        # batch to paho and writes it; the shutdown comes just before that step and the new socket just
        # after, in the same turn, with no poll of the sockets in between, so paho still counts itself
        # connected when it publishes and the write is the first to find out.
        loop = asyncio.get_running_loop()
        reused: list[socket.socket] = []
        loop.call_soon(sock.shutdown, socket.SHUT_WR)  # the next send fails (EPIPE)
        sending = asyncio.ensure_future(link.publish_many(_batch(0, 5)))
        loop.call_soon(lambda: reused.append(socket.socket()))  # the lowest free number
        try:
            assert await asyncio.wait_for(sending, 15) == [False] * 5
            assert reused[0].fileno() == fd, "the test's premise: the new socket has the old number"
            assert not _has_writer(fd), "the link's writer is left on a socket that is not its own"
        finally:
            for s in reused:
                s.close()
        # The link reconnects by itself, and the next batch goes out.
        await asyncio.wait_for(_reconnected(link), 10)
        assert await link.publish_many(_batch(5, 3)) == [True] * 3
        await peer.wait_for(lambda _t, p: json.loads(p) == {"n": 7}, timeout=5)


async def _reconnected(link: MqttLink) -> None:
    while link.reconnects == 0 or not link.connected.is_set():
        await asyncio.sleep(0.05)


async def test_a_broker_that_stops_answering_is_noticed_and_gets_what_was_queued_once_it_answers(
    broker: Mosquitto,
) -> None:
    # mosquitto stopped (SIGSTOP) keeps its socket open: nothing fails, nothing answers. The link's
    # keepalive notices; what it queued meanwhile waits, and goes once the broker answers again.
    async with _connected(broker, keepalive_s=5) as (link, peer, _):
        link.send(_answers(0, 3))
        await peer.wait_for(lambda _t, p: json.loads(p) == {"n": 2}, timeout=5)
        await asyncio.wait_for(_drained(link), 5)  # the broker's acknowledgements may come after
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            link.send(_answers(3, 5))  # returns at once: nobody waits for a broker
            assert link.outgoing.depth == 5

            async def dead() -> None:
                while link.connected.is_set():
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(dead(), 30)  # keepalive 5 s: a ping unanswered for 5 s more
            link.send(_answers(8, 2))  # queued while the link is down
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        await asyncio.wait_for(_reconnected(link), 30)
        await peer.wait_for(lambda _t, p: json.loads(p) == {"n": 9}, timeout=15)
        assert _heard(peer) == list(range(10))
        await asyncio.wait_for(_drained(link), 10)


async def test_what_is_queued_while_disconnected_goes_in_order_up_to_the_bound(broker: Mosquitto) -> None:
    link = _link(broker, max_queued_messages=10)
    link.send(_answers(0, 15))  # no connection yet: queued, the oldest 5 dropped and counted
    assert link.outgoing.depth == 10 and link.outgoing.dropped == 5
    async with MqttPeer(broker.url) as peer:
        await peer.subscribe("tdc/v1/site-1/gateway/#")
        runner = asyncio.create_task(link.run())  # connects now that the peer listens
        try:
            await peer.wait_for(lambda _t, p: json.loads(p) == {"n": 14}, timeout=10)
            assert [json.loads(p)["n"] for _, p, _ in peer.messages] == list(range(5, 15))
            await asyncio.wait_for(_drained(link), 10)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


async def _drained(link: MqttLink) -> None:
    while link.outgoing.depth:
        await asyncio.sleep(0.05)


async def test_a_message_is_acknowledged_once_handled_and_delivered_again_when_it_could_not_be(
    broker: Mosquitto,
) -> None:
    # The handler cannot keep message 2 the first time (Redeliver): the link leaves it unacknowledged and
    # reconnects; the broker (persistent session) delivers it again, and the one after it, which the
    # link had not handled yet. Message 1, acknowledged once handled, does not come again.
    handled: list[bytes] = []
    refuse = {b"2"}

    async def on_message(m: Inbound) -> None:
        handled.append(m.payload)
        if m.payload in refuse:
            refuse.discard(m.payload)
            raise Redeliver("not on disk")

    link = MqttLink(MqttSection(broker=broker.url, reconnect_max_s=0.5), "site-1", on_message, lambda: None,
                    lambda: b"{}")
    runner = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        async with MqttPeer(broker.url) as peer:
            for n in (b"1", b"2", b"3"):
                await peer.publish("tdc/v1/site-1/ldc/envelope", n)

            await asyncio.wait_for(_until(lambda: b"3" in handled), 15)
            await peer.publish("tdc/v1/site-1/ldc/envelope", b"4")  # after it: whatever came again is in
            await asyncio.wait_for(_until(lambda: b"4" in handled), 10)
        assert handled == [b"1", b"2", b"2", b"3", b"4"]
        assert link.reconnects == 1
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_receiving_messages_leaves_no_reference_cycle(broker: Mosquitto) -> None:
    # `der-gateway run` collects reference cycles once a minute (gateway/cli.py): what each message left
    # in one stayed allocated until then (paho's topic matcher did: 1,200 objects for these 200)
    handled: list[bytes] = []

    async def on_message(m: Inbound) -> None:
        handled.append(m.payload)

    link = MqttLink(MqttSection(broker=broker.url), "site-1", on_message, lambda: None, lambda: b"{}")
    runner = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        async with MqttPeer(broker.url) as peer:
            for n in range(220):
                if n == 20:  # what is made once is made; from here every message is like the last
                    await asyncio.wait_for(_until(lambda: len(handled) == 20), 10)
                    gc.collect()
                    gc.disable()
                await peer.publish("tdc/v1/site-1/ldc/envelope", b"{}")
            await asyncio.wait_for(_until(lambda: len(handled) == 220), 15)
            assert gc.collect() == 0
    finally:
        gc.enable()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _until(pred: Callable[[], bool]) -> None:
    while not pred():
        await asyncio.sleep(0.05)


async def test_the_links_topic_matcher_matches_what_pahos_does() -> None:
    filters = ["#", "+", "a", "a/#", "a/+", "a/+/c", "+/b/#", "a/b/c", "$SYS/#", "+/+", "a/b/c/#"]
    topics = ["a", "a/b", "a/b/c", "a/b/c/d", "x/b", "x/b/c", "$SYS/x", "$SYS", "a/", "/b", ""]
    for n in range(len(filters)):
        ours, pahos = _Matcher(), MQTTMatcher()
        for f in filters[n:] + filters[:n]:
            ours[f] = pahos[f] = f
        for t in topics:
            assert sorted(ours.iter_match(t)) == sorted(pahos.iter_match(t)), t
