"""The gateway's MQTT link against a real mosquitto: how it hands a batch of answers to the socket.

The link hands a batch to paho and has paho write it in the caller's turn, and registers paho's
socket writer in the turn paho asks for it. These tests hold the invariant that makes that safe: the
loop has a writer on the link's socket exactly while paho has something to write, also when a write
fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest

from gateway.config import MqttSection
from gateway.north.mqtt import MqttLink, MqttPeer
from simulators.mosquitto import Mosquitto

pytestmark = pytest.mark.asyncio


async def _nothing() -> None:
    return None


@contextlib.asynccontextmanager
async def _connected(broker: Mosquitto) -> AsyncIterator[tuple[MqttLink, MqttPeer, socket.socket]]:
    """A running link, connected, with a peer that hears what it publishes, and the link's socket."""
    link = MqttLink(MqttSection(broker=broker.url, reconnect_max_s=0.5), "site-1",
                    lambda _m: _nothing(), _nothing, b"{}")
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
