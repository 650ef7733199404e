"""The gateway's MQTT link against a real mosquitto: how it hands a batch of answers to the socket."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.config import MqttSection
from gateway.north.mqtt import MqttLink, MqttPeer
from simulators.mosquitto import Mosquitto

pytestmark = pytest.mark.asyncio


async def _nothing() -> None:
    return None


async def test_a_batch_goes_out_in_order_and_leaves_no_writer_on_the_loop(broker: Mosquitto) -> None:
    # The link writes a batch in the turn it is queued, ahead of the add_writer paho asked aiomqtt for;
    # that writer comes a turn later, and a writer left on a socket that is always writable would wake
    # the loop on every turn (the gateway at 100 % of a core).
    link = MqttLink(MqttSection(broker=broker.url), "site-1", lambda _m: _nothing(), _nothing, b"{}")
    runner = asyncio.create_task(link.run())
    try:
        async with MqttPeer(broker.url) as peer:
            await peer.subscribe("tdc/v1/site-1/gateway/#")
            await asyncio.wait_for(link.connected.wait(), 10)
            batch = [("gateway/telemetry", json.dumps({"n": i}).encode(), False) for i in range(5)]
            assert await link.publish_many(batch) == [True] * 5
            for i in range(5):
                await peer.wait_for(lambda _t, p, i=i: json.loads(p) == {"n": i}, timeout=5)
            assert [json.loads(p)["n"] for _, p, _ in peer.messages] == [0, 1, 2, 3, 4]
            await asyncio.sleep(0.1)  # turns enough for paho's add_writer and whatever follows it
            assert link._client is not None
            sock = link._client._client.socket()
            assert sock is not None
            assert not asyncio.get_running_loop().remove_writer(sock.fileno()), "a writer was left behind"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
