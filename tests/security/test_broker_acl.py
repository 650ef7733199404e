"""PROTOCOL §1 in production: TLS client certificates, CN as user name, the per-role ACL, and the gateway's
own role check behind it (TDC-04). Real mosquitto with examples/mosquitto/, real gateway, real sockets.

A message the broker drops leaves nothing to wait for, so each negative check is closed by a message
that must be answered: the gateway handles messages in order and the broker keeps one publisher's
messages in order for one subscriber, so once the later one is answered, the dropped one would have been
seen (and answered) first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.core.model import Inbound, Invalid
from gateway.core.outbound import Outbound
from gateway.north.mqtt import MqttLink, MqttPeer
from simulators.mosquitto import Mosquitto
from tests.security.tls import client_tls, tls_site
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio


def record_inbound(rig: Rig) -> list[Inbound | Invalid]:
    """Every message that reaches the gateway's core, whatever its fate."""
    seen: list[Inbound | Invalid] = []

    def note(msg: Inbound | Invalid, _outs: list[Outbound]) -> None:
        seen.append(msg)

    assert rig.gateway is not None
    rig.gateway.inbound_listeners.append(note)
    return seen


async def answered_sync(rig: Rig, peer: MqttPeer, role: str, sync_id: str) -> None:
    """Publish, as `role` on `peer`, a cancel of nothing (rejected, changes nothing) and wait for its
    answer on the same peer."""
    mark = len(peer.messages)
    body = rig.message(role, "cancel", sync_id, ref="no-such-instruction")
    await peer.publish(f"{rig.prefix}{role}/cancel", json.dumps(body).encode())
    topic = f"{rig.prefix}gateway/response/{role}"

    def match(t: str, p: bytes) -> bool:
        return t == topic and json.loads(p).get("ref") == sync_id and json.loads(p)["status"] == "rejected"

    await peer.wait_for(match, timeout=10, start=mark)


def mentions(peer: MqttPeer, text: str) -> list[str]:
    return [t for t, p, _ in peer.messages if text.encode() in p]


async def test_ldc_certificate_sets_a_limit_that_binds(rig: Rig) -> None:
    mark = await rig.send("ldc", "envelope", "sec-env", export_limit_kw=40.0, reason="thermal",
                          start=0, end=600)
    await rig.response("sec-env", "accepted", role="ldc", start=mark)
    t = await rig.telemetry(lambda t: t["effective"]["binding"] == "envelope:sec-env", start=mark)
    assert t["effective"]["export_limit_kw"] == pytest.approx(40.0)
    await rig.wait_meter(lambda p: p <= 40.0 + rig.site.site.target_tolerance_kw)


@pytest.mark.parametrize(("forger", "topic_role", "msg_type", "fields"), [
    ("ieso", "ldc", "envelope", {"export_limit_kw": 0.0, "reason": "thermal", "start": 0, "end": 600}),
    ("ieso", "ldc", "override", {"action": "disconnect", "reason": "forged", "start": 0}),
    ("ldc", "ieso", "dispatch", {"product": "energy", "kind": "manual", "target_kw": -300.0,
                                 "start": 0, "end": 600}),
])
async def test_a_role_cannot_publish_on_the_other_roles_topics(
        rig: Rig, market: MqttPeer, forger: str, topic_role: str, msg_type: str, fields: dict) -> None:
    peers = {"ldc": rig.peer, "ieso": market}
    seen = record_inbound(rig)
    forged = rig.message(topic_role, msg_type, "forged-1", **fields)  # a valid message of the other role
    await peers[forger].publish(f"{rig.prefix}{topic_role}/{msg_type}", json.dumps(forged).encode())
    # the role whose topic was abused reads that topic's responses: its answered message closes the check
    await answered_sync(rig, peers[topic_role], topic_role, "sync-1")
    assert [m.id for m in seen] == ["sync-1"]  # the gateway never saw the forged message
    assert mentions(peers[topic_role], "forged-1") == []
    assert rig.gateway is not None
    assert rig.gateway.engine.status(datetime.now(UTC)).active == ()


async def test_a_peer_cannot_publish_as_the_gateway(rig: Rig, market: MqttPeer) -> None:
    fake = {"v": 1, "type": "status", "id": "gw-fake", "issuer": "gateway", "state": "offline"}
    for suffix in ("gateway/telemetry", "gateway/status", "gateway/response/ldc"):
        await market.publish(rig.prefix + suffix, json.dumps(fake).encode())
    await answered_sync(rig, rig.peer, "ldc", "sync-2")  # the LDC would have got the fakes before this
    assert mentions(rig.peer, "gw-fake") == []


async def test_each_role_reads_only_its_own_responses(rig: Rig, market: MqttPeer) -> None:
    await answered_sync(rig, rig.peer, "ldc", "sync-ldc")
    await answered_sync(rig, market, "ieso", "sync-ieso")  # answered after the LDC's, so it arrives after
    assert mentions(market, "sync-ldc") == []
    assert mentions(rig.peer, "sync-ieso") == []
    # both still read the gateway topics meant for both
    for peer in (market, rig.peer):
        await peer.wait_for(lambda t, _p: t == rig.prefix + "gateway/telemetry")
        await peer.wait_for(lambda t, _p: t == rig.prefix + "gateway/status")


async def test_another_certificate_cannot_take_over_the_gateways_session(rig: Rig, tls_broker: Mosquitto,
                                                                         certs: Path) -> None:
    assert rig.gateway is not None
    gateway_client_id = f"der-gateway-{rig.site.site.id}"
    async with MqttPeer(tls_broker.url, client_id=gateway_client_id, tls_context=client_tls(certs, "ieso"),
                        persistent=True):
        # had the broker handed the gateway's client id to this connection, the gateway would have been
        # disconnected, and this round trip would wait for its reconnection
        await answered_sync(rig, rig.peer, "ldc", "sync-3")
    assert rig.gateway.mqtt.link.reconnects == 0


async def mqtt_connect(port: int, tls: ssl.SSLContext | None) -> bytes:
    """Open a connection and send an MQTT 3.1.1 CONNECT; the broker's first reply (a CONNACK is 4 bytes,
    20 02 00 00 when accepted), or b"" when it closes the connection. aiomqtt would report a refusal only
    by timing out, so the test speaks the four bytes of MQTT itself."""
    client_id = b"probe"
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                       server_hostname="localhost" if tls else None)
    except (ssl.SSLError, ConnectionError):
        return b""  # refused during the handshake (on either side)
    try:
        writer.write(bytes([0x10, len(body)]) + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), 10)
    except (ssl.SSLError, ConnectionError):
        return b""  # refused during the handshake or right after it
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def test_a_client_with_a_certificate_from_our_ca_is_accepted(tls_broker: Mosquitto,
                                                                  certs: Path) -> None:
    assert await mqtt_connect(tls_broker.port, client_tls(certs, "ldc")) == b"\x20\x02\x00\x00"


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA", "plain TCP"])
async def test_a_client_without_a_certificate_from_our_ca_is_refused(tls_broker: Mosquitto, certs: Path,
                                                                    who: str) -> None:
    tls: ssl.SSLContext | None = {
        "no certificate": client_tls(certs, None),
        "certificate from another CA": client_tls(certs, "rogue"),  # CN ldc, signed by rogue-ca
        "plain TCP": None,
    }[who]
    assert await mqtt_connect(tls_broker.port, tls) == b""


@pytest.mark.parametrize(("ca", "accepted"), [("ca", True), ("rogue-ca", False)])
async def test_the_gateway_talks_only_to_a_broker_its_ca_vouches_for(tls_broker: Mosquitto, certs: Path,
                                                                    ca: str, accepted: bool) -> None:
    """The gateway's own TLS context, from its site file: with the deployment's CA it is let in (its
    certificate is good); trusting only another CA, it refuses the broker (a man in the middle)."""
    site = tls_site(certs, tls_broker.url)
    site.mqtt.ca_file = certs / f"{ca}.crt"
    link = MqttLink(site.mqtt, site.site.id, lambda _m: asyncio.sleep(0), lambda: asyncio.sleep(0), b"{}")
    reply = await mqtt_connect(tls_broker.port, link._tls)
    assert reply == (b"\x20\x02\x00\x00" if accepted else b"")


async def test_tdc_04_issuer_or_type_not_of_the_topics_role_is_unauthorized_over_tls(rig: Rig) -> None:
    env = rig.message("ldc", "envelope", "e-issuer", export_limit_kw=10.0, reason="thermal", start=0, end=60)
    env["issuer"] = "ieso"  # the LDC's certificate, the LDC's topic, but claims to be the market side
    mark = await rig.publish("ldc", "envelope", env)
    rej = await rig.response("e-issuer", "rejected", role="ldc", start=mark)
    assert rej["reason"] == "UNAUTHORIZED"

    disp = rig.message("ldc", "dispatch", "d-type", product="energy", kind="manual", target_kw=10.0,
                       start=0, end=60)  # a market-side type on the LDC's topic
    mark = await rig.publish("ldc", "dispatch", disp)
    rej = await rig.response("d-type", "rejected", role="ldc", start=mark)
    assert rej["reason"] == "UNAUTHORIZED"
    assert rig.gateway is not None
    assert rig.gateway.engine.status(datetime.now(UTC)).active == ()
