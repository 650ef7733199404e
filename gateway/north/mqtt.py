"""The gateway's MQTT link (aiomqtt; the only module that imports it).

Subscribes to the site's inbound topics (PROTOCOL §1), hands every message to the app and acknowledges
it (PUBACK) only once the app returns, with the message on disk; publishes what the app queues, in
order, without the app waiting for the broker (gateway.north.outgoing); keeps the retained `status`
with an `offline` last will; and reconnects with capped exponential backoff when the broker goes away,
or stops answering (paho's keepalive). A persistent session (clean_session False and a fixed client id)
makes the broker keep the QoS 1 instructions that arrive while the gateway is away, and deliver again
those it has not acknowledged: an instruction is never lost between its receipt and the journal.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.matcher import MQTTMatcher

from gateway.config import MqttSection, TlsFileError
from gateway.north.outgoing import Outgoing, OutgoingQueue

log = logging.getLogger(__name__)

TOPIC_ROOT = "tdc/v1"


class _NoPipelineNoise(logging.Filter):
    """aiomqtt warns about every pending publish; a pipelined telemetry replay has hundreds by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


logging.getLogger("mqtt").addFilter(_NoPipelineNoise())
INBOUND_ROLES = ("ieso", "ldc")


@dataclass(frozen=True)
class Inbound:
    topic: str
    role: str  # "ieso" or "ldc": the topic segment after the site
    msg_type: str  # the last topic segment
    payload: bytes


OnMessage = Callable[[Inbound], Awaitable[None]]
OnConnect = Callable[[], None]  # called on every connection, before the first message is delivered


class KeyFileError(TlsFileError):
    """A TLS key file that others can read: refused, so that a leaked key is not silently used."""


def broker_address(url: str) -> tuple[str, int, bool]:
    u = urlparse(url)
    tls = u.scheme == "mqtts"
    return u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883), tls


def _tls_context(cfg: MqttSection) -> ssl.SSLContext:
    """The client's TLS context from `[mqtt]`. Every problem with its files is a TlsFileError that names
    the file and the fix; MqttLink builds it before the first connection, so a bad file stops the start
    instead of failing every reconnect."""
    if (cfg.cert_file is None) != (cfg.key_file is None):
        raise TlsFileError("[mqtt] cert_file and key_file go together: set both (the gateway's client "
                           "certificate and its private key) or neither")
    for name in ("ca_file", "cert_file", "key_file"):
        _check_readable(name, getattr(cfg, name))
    key = cfg.key_file
    if key is not None and key.stat().st_mode & 0o077:
        raise KeyFileError(f"[mqtt] key_file {_shown(key)}: the private key is readable by group or others "
                           f"(mode {key.stat().st_mode & 0o777:o}); run: chmod 600 {key}")
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    except ssl.SSLError as err:
        raise TlsFileError(f"[mqtt] ca_file {_shown(cfg.ca_file)}: no usable PEM CA certificate in it "
                           f"({err})") from None
    if cfg.cert_file is not None and key is not None:
        try:
            ctx.load_cert_chain(str(cfg.cert_file), str(key))
        except ssl.SSLError as err:
            raise TlsFileError(f"[mqtt] cert_file {_shown(cfg.cert_file)} with key_file {_shown(key)}: "
                               f"cannot be loaded ({err}); both must be PEM and the key must be the "
                               "certificate's") from None
    return ctx


def _shown(path: Path | None) -> str:
    """A relative path as written, and where it was looked for (the working directory, not the site
    file's directory, which surprises people)."""
    if path is None or path.is_absolute():
        return str(path)
    return f"{path} ({path.resolve()})"


def _check_readable(name: str, path: Path | None) -> None:
    if path is None:
        return
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise TlsFileError(f"[mqtt] {name} {_shown(path)}: no such file") from None
    except OSError as err:  # a directory, no permission, …
        raise TlsFileError(f"[mqtt] {name} {_shown(path)}: cannot be read ({err.strerror})") from None


class _Matcher(MQTTMatcher):
    """paho's topic-filter matcher, without the reference cycle of its `iter_match`: a nested generator
    that refers to itself, made for every message received, so each message left its frames for the
    cycle collector. `der-gateway run` collects once a minute (cli.py); until then the fuzz soak held
    2.2 MiB more per 1,000 messages. The same filters match; the tree is walked with an explicit stack."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        parts = topic.split("/")
        wild = not topic.startswith("$")  # a wildcard at the top level never matches a $ topic
        found: list[Any] = []
        stack: list[tuple[MQTTMatcher.Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            children = node._children
            if "#" in children and (wild or i > 0) and children["#"]._content is not None:
                found.append(children["#"]._content)
            if i == len(parts):
                if node._content is not None:
                    found.append(node._content)
                continue
            if "+" in children and (wild or i > 0):
                stack.append((children["+"], i + 1))
            if parts[i] in children:
                stack.append((children[parts[i]], i + 1))
        return iter(found)


class _Client(aiomqtt.Client):
    """aiomqtt's client, with paho's socket writer registered in the turn paho asks for it, the broker's
    acknowledgements told to the link, and inbound messages acknowledged by the link (paho's manual ack).

    aiomqtt registers the writer through call_soon_threadsafe(add_writer), because paho asks from the
    executor thread that runs its connect. From the loop's own thread that defers the write by two turns
    of the loop (up to 52 ms at 1,000 devices, measured), and it lets paho's view of the registration lag
    the loop's: a write made in between (`write_now`) leaves a writer added after paho dropped it, maybe
    on a closed or reused socket. Registered at once on the loop's thread, the two always agree.
    """

    def __init__(self, *args: Any, on_acknowledged: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_thread = threading.get_ident()
        self._on_acknowledged = on_acknowledged
        # paho would acknowledge (PUBACK) a QoS 1 message as soon as it has read it: the link does, once
        # the app has it on disk (`ack`)
        self._client.manual_ack_set(True)
        self._client._on_message_filtered = _Matcher()

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() != self._loop_thread:
            super()._on_socket_register_write(client, userdata, sock)
        else:
            self._loop.add_writer(sock.fileno(), self.write_now)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        # instead of aiomqtt's, which serves its own `publish`: the link publishes through `queue` only
        self._on_acknowledged(mid)

    def write_now(self) -> None:
        """Write what paho has queued, as far as the socket takes it (paho then keeps or drops its
        writer). What paho does itself when no event loop drives it."""
        try:
            self._client.loop_write()
        except Exception as exc:  # as aiomqtt's writer: a broken socket ends the connection
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def queue(self, topic: str, payload: bytes, retain: bool) -> int:
        """aiomqtt's `publish` at QoS 1 without its coroutine: handed to paho now, in the caller's turn
        (aiomqtt's does it in its first step, a turn of the loop later: at 1,000 devices a turn can take
        10-20 ms, and an answer crossed three); its message id. Raises MqttCodeError as aiomqtt's does."""
        info = self._client.publish(topic, payload, 1, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            cause = self._disconnected.exception() if self._disconnected.done() else None
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message") from cause
        return info.mid

    def ack(self, message: aiomqtt.Message) -> None:
        """Acknowledge an inbound message to the broker (PUBACK for QoS 1), written at once."""
        self._client.ack(message.mid, message.qos)
        self.write_now()


class Redeliver(Exception):
    """Raised by the message handler when it could not take a message into safe keeping (it is not on
    disk): the link leaves it unacknowledged and reconnects, so that the broker delivers it again."""


PUBLISH_CHUNK = 200  # queued messages handed to paho in one turn of the loop when a backlog goes out


class MqttLink:
    """The link to the broker: inbound messages to `on_message`, one at a time in arrival order, each
    acknowledged once it returns; outbound messages queued (`send`), never awaited by the app."""

    def __init__(self, cfg: MqttSection, site_id: str, on_message: OnMessage, on_connect: OnConnect,
                 offline_payload: Callable[[], bytes]) -> None:
        self.cfg = cfg
        self.site_id = site_id
        self.prefix = f"{TOPIC_ROOT}/{site_id}/"
        self._on_message = on_message
        self._on_connect = on_connect
        self._offline_payload = offline_payload  # the last will, as of each connection
        self._client: _Client | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._not_stored = 0  # Redelivers in a row: a store that keeps failing is retried with backoff
        self.outgoing = OutgoingQueue(cfg.max_queued_messages)
        self._backlog = asyncio.Event()  # the publisher has queued messages to hand to paho
        self._tls: ssl.SSLContext | None = None
        if broker_address(cfg.broker)[2]:
            self._tls = _tls_context(cfg)  # now, so that a bad TLS file stops the start (TlsFileError)
        elif cfg.cert_file or cfg.key_file:
            log.warning("mqtt: %s is not mqtts://, so [mqtt] cert_file/key_file are not used and the link "
                        "is not encrypted", cfg.broker)

    def _make_client(self) -> _Client:
        host, port, tls = broker_address(self.cfg.broker)
        if tls and self._tls is None:  # the broker URL was changed to mqtts:// after the start
            self._tls = _tls_context(self.cfg)
        return _Client(
            host,
            port,
            identifier=self.cfg.client_id or f"der-gateway-{self.site_id}",
            clean_session=False,
            keepalive=self.cfg.keepalive_s,
            will=aiomqtt.Will(self.prefix + "gateway/status", self._offline_payload(), qos=1, retain=True),
            tls_context=self._tls if tls else None,
            # paho never sets TCP_NODELAY; without it a QoS 1 round trip can cost 44 ms (Nagle).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            # paho holds no more than the link's queue does (see OutgoingQueue)
            max_queued_outgoing_messages=self.cfg.max_queued_messages,
            timeout=10,
            on_acknowledged=self._acknowledged,
        )

    async def run(self) -> None:
        """Connect, subscribe and deliver messages forever; reconnect with capped backoff."""
        publisher = asyncio.create_task(self._publisher())
        delay = 0.5
        try:
            while True:
                try:
                    async with self._make_client() as client:
                        self._client = client
                        self._backlog.set()  # what the last connection left unacknowledged goes first
                        for role in INBOUND_ROLES:
                            await client.subscribe(f"{self.prefix}{role}/+", qos=1)
                        self.connected.set()
                        delay = 0.5
                        log.info("mqtt: connected to %s", self.cfg.broker)
                        self._on_connect()
                        async for message in client.messages:
                            await self._deliver(client, message)
                except aiomqtt.MqttError as err:
                    log.warning("mqtt: link to %s lost (%s); retrying in %.1f s", self.cfg.broker, err, delay)
                except Redeliver as err:
                    self._not_stored += 1
                    delay = min(0.5 * 2 ** self._not_stored, self.cfg.reconnect_max_s)
                    log.error("mqtt: %s; not acknowledged, so the broker delivers it again: reconnecting "
                              "in %.1f s", err, delay)
                finally:
                    self._client = None
                    self.connected.clear()
                    self.outgoing.connection_lost()
                self.reconnects += 1
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self.cfg.reconnect_max_s)
        finally:
            publisher.cancel()

    async def _deliver(self, client: _Client, message: aiomqtt.Message) -> None:
        """Hand one message to the app and acknowledge it once the app returns: in arrival order, as MQTT
        wants its PUBACKs, and only once it is on disk, so that a gateway that dies before has it
        delivered again by the broker (persistent session)."""
        topic = str(message.topic)
        parts = topic[len(self.prefix):].split("/")
        if topic.startswith(self.prefix) and len(parts) == 2 and parts[0] in INBOUND_ROLES:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            try:
                await self._on_message(Inbound(topic, parts[0], parts[1], payload))
                self._not_stored = 0
            except Redeliver:
                raise
            except Exception:  # a bug in handling one message must never stop the link
                log.exception("mqtt: error while handling a message on %s", topic)
        # else another site's or an unknown topic: ignored (TDC-03), and acknowledged
        client.ack(message)

    # ---- outbound ----------------------------------------------------------------------------------
    def send(self, messages: Sequence[Outgoing]) -> None:
        """Queue messages for the broker, in order, and return at once. When the link is up and nothing
        queued before them is still waiting, they are handed to paho and written in the caller's turn
        (an instruction's answer reaches the socket in the turn it was decided); else the publisher
        hands them on in order, the backlog first."""
        backlog = self.outgoing.waiting()
        for msg in messages:
            self.outgoing.put(msg)
        client = self._client
        if client is None:
            return
        # behind a backlog, in turn; else at once, and what paho could not take yet to the publisher
        if backlog or self._hand(client, len(messages)):
            self._backlog.set()

    def _hand(self, client: _Client, limit: int) -> bool:
        """Up to `limit` queued messages to paho, written at once; whether more are waiting that paho
        could take now (paho full or gone: no, until an acknowledgement or the next connection)."""
        for n, msg in enumerate(self.outgoing.take(), 1):
            try:
                self.outgoing.handed(msg, client.queue(self.prefix + msg.suffix, msg.payload, msg.retain))
            except aiomqtt.MqttError as err:
                self.outgoing.put_back(msg)
                log.debug("mqtt: publish to %s deferred: %s", msg.suffix, err)
                client.write_now()
                return False
            if n >= limit:
                break
        client.write_now()
        return self.outgoing.waiting()

    async def _publisher(self) -> None:
        """Hands the backlog (what waited for a connection, or for paho to take more) to paho in order,
        PUBLISH_CHUNK a turn so that a long one does not hold the loop."""
        while True:
            await self._backlog.wait()
            self._backlog.clear()
            while (client := self._client) is not None and self._hand(client, PUBLISH_CHUNK):
                await asyncio.sleep(0)

    def _acknowledged(self, mid: int) -> None:
        self.outgoing.acknowledged(mid)
        if self.outgoing.waiting():
            self._backlog.set()  # paho may have refused some for want of room

    async def publish_many(self, messages: Sequence[tuple[str, bytes, bool]]) -> list[bool]:
        """Publish (suffix, payload, retain) messages at QoS 1 under the site prefix, in order with what is
        queued, and wait for the broker: for each, whether it acknowledged it; all False when the broker
        is not reachable now. Nothing is kept for another connection (telemetry has its own outbox)."""
        if self._client is None:
            return [False] * len(messages)
        loop = asyncio.get_running_loop()
        settled = [loop.create_future() for _ in messages]
        self.send([Outgoing(suffix, payload, retain, keep=False, on_settled=partial(_settle, done))
                   for (suffix, payload, retain), done in zip(messages, settled, strict=True)])
        return list(await asyncio.gather(*settled))


def _settle(done: asyncio.Future[bool], acknowledged: bool) -> None:
    if not done.done():  # its caller may be gone
        done.set_result(acknowledged)


class MqttPeer:
    """A plain client for the other side of the link (market side, LDC, scenario player, tests).

    Collects every message on its subscriptions so a caller can wait for the one it expects.
    """

    def __init__(self, url: str, client_id: str | None = None,
                 tls_context: ssl.SSLContext | None = None, persistent: bool = False) -> None:
        host, port, _ = broker_address(url)
        # persistent: the broker keeps this peer's subscriptions and messages while it is away
        self._client = aiomqtt.Client(host, port, identifier=client_id, tls_context=tls_context,
                                      clean_session=not persistent,
                                      socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                      max_queued_outgoing_messages=100_000)
        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retain)
        self._arrived = asyncio.Condition()
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> MqttPeer:
        await self._client.__aenter__()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader:
            self._reader.cancel()
        await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for m in self._client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            async with self._arrived:
                self.messages.append((str(m.topic), payload, bool(m.retain)))
                self._arrived.notify_all()

    async def subscribe(self, topic: str) -> None:
        await self._client.subscribe(topic, qos=1)

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=1, retain=retain)

    async def wait_for(self, predicate: Callable[[str, bytes], bool], timeout: float = 10.0,
                       start: int = 0) -> tuple[str, bytes]:
        """The first message from index `start` on that matches; raises TimeoutError after `timeout` s."""
        async def _match() -> tuple[str, bytes]:
            seen = start
            async with self._arrived:
                while True:
                    for topic, payload, _ in self.messages[seen:]:
                        if predicate(topic, payload):
                            return topic, payload
                    seen = len(self.messages)
                    await self._arrived.wait()

        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancellation on 3.11
            return await _match()
