"""The T-D coordination protocol over MQTT (PROTOCOL §1–§4) as a north interface (north/port.py): the
IESO's and the LDC's topics in, the gateway's answers, status and telemetry out.

Inbound messages are decoded and submitted (Port.submit); one that could not be journalled is left
unacknowledged, so that the broker delivers it again (MqttLink, at-least-once). Nothing here is awaited by
the control path: answers and status go into the link's outgoing queue (fire-and-queue, kept across a
reconnect), and telemetry is stored first and published from the store's outbox in a task of its own, in
seq order, what waited for the broker marked `replayed` (TDC-21).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from gateway import __version__
from gateway.clocks import clocks
from gateway.core.outbound import Status
from gateway.journal import Encoded
from gateway.north.mqtt import Inbound, MqttLink, Redeliver
from gateway.north.outgoing import Outgoing
from gateway.north.port import CycleView, NotJournalled, Port
from gateway.protocol.codec import decode_inbound, encode_outbound

log = logging.getLogger(__name__)
SOURCE = "mqtt"
TELEMETRY = "gateway/telemetry"
REPLAY_BATCH = 200  # telemetry messages in flight at once when the outbox is replayed


class MqttInterface:
    def __init__(self, port: Port, broker_url: str | None = None) -> None:
        self.port = port
        site = port.site
        if broker_url:
            site.mqtt.broker = broker_url
        self.site_id = site.site.id
        self.link = MqttLink(site.mqtt, site.site.id, self._on_message, self._on_connect,
                             offline_payload=lambda: encode_outbound(self.status(online=False),
                                                                     site.site.id)[1])
        self.telemetry_seq = port.outbox.last_seq()  # contiguous across restarts, never reused
        self._flushing: asyncio.Task | None = None  # the telemetry outbox on its way (_flush_outbox)
        self._live_seq: int | None = None  # the telemetry just taken: the only one not marked replayed
        self._last_status: Status | None = None

    # ---- the NorthInterface -------------------------------------------------------------------------
    def services(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        return {"mqtt": self._run_link, "telemetry": self._telemetry_loop, "status": self._status_loop}

    def on_cycle(self, view: CycleView) -> None:
        pass  # the cycle's answers come by on_outbound, once journalled; telemetry on its own interval

    def on_outbound(self, encoded: list[Encoded]) -> None:
        """Queue one batch of answers for the broker: queued whole, in order, so two batches never
        interleave (a cycle's `started` never comes between an instruction's `received` and its decision,
        TDC-01). Kept until the broker acknowledges them, also across a reconnect. (The status follows
        each cycle's batch: the gateway calls publish_status.)"""
        self.link.send([Outgoing(suffix, payload, retain=suffix.endswith("availability"))
                        for suffix, payload in encoded])

    def alarms(self) -> tuple[str, ...]:
        outgoing = self.link.outgoing
        if not outgoing.dropped:
            return ()
        return (f"MQTT queue full while the broker did not acknowledge: {outgoing.dropped} oldest answers "
                f"or status messages dropped (mqtt.max_queued_messages = {outgoing.max_messages})",)

    # ---- inbound ------------------------------------------------------------------------------------
    async def _on_message(self, inbound: Inbound) -> None:
        try:
            await self.port.submit(decode_inbound(inbound.role, inbound.msg_type, inbound.payload),
                                   source=SOURCE)
        except NotJournalled as err:
            raise Redeliver(f"the message on {inbound.topic} could not be journalled "
                            f"({err.__cause__})") from err

    def _on_connect(self) -> None:
        self._last_status = None  # the broker may have published the last will meanwhile
        self.publish_status()
        self._flush_outbox()

    async def _run_link(self) -> None:
        try:
            await self.link.run()
        finally:
            if self._flushing is not None:
                self._flushing.cancel()

    # ---- status -------------------------------------------------------------------------------------
    def status(self, online: bool = True) -> Status:
        now, _ = clocks()
        info, devices = self.port.info(), self.port.devices()
        return Status(site_id=self.site_id, at=now, state="online" if online else "offline",
                      mode=info.mode, comms=info.comms, active=info.active, devices_online=devices.online,
                      devices_total=devices.total, version=__version__, alarms=self.port.alarms(info))

    def publish_status(self, force: bool = False) -> None:
        # compared without its time, so an unchanged status is not republished every cycle; queued
        # retained and coalesced, so a broker outage leaves only the newest to go
        status = self.status()
        key = replace(status, at=datetime.min)
        if force or key != self._last_status:
            suffix, payload = encode_outbound(status, self.site_id)
            self.link.send([Outgoing(suffix, payload, retain=True, coalesce=True)])
            self._last_status = key

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.port.site.site.status_interval_s)
            self.publish_status(force=True)

    # ---- telemetry ----------------------------------------------------------------------------------
    async def _telemetry_loop(self) -> None:
        interval = self.port.site.site.telemetry_interval_s
        while True:
            # aligned to the clock: 5 s telemetry goes out at :00, :05, :10 …
            await asyncio.sleep(interval - (time.time() % interval))
            t = self.port.telemetry(self.telemetry_seq + 1, datetime.now(UTC))
            if t is None:
                continue
            self.telemetry_seq = t.seq
            await asyncio.sleep(0)  # building and encoding 1,000 devices' telemetry: ~10 ms each
            _, payload = encode_outbound(t, self.site_id)
            stored = await self.port.store_telemetry(t.seq, payload)
            self._flush_outbox(live_seq=t.seq)
            if not stored:  # the store is full: sent live all the same, queued (counted as not stored)
                self.link.send([Outgoing(TELEMETRY, payload)])

    def _flush_outbox(self, live_seq: int | None = None) -> None:
        """Publish the outbox in seq order, in a task of its own (neither the telemetry loop nor the
        link's inbound messages wait for the broker's acknowledgements); what waited for the broker goes
        out marked `replayed`, all but `live_seq`. A flush under way goes on to what was added since."""
        self._live_seq = live_seq
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="telemetry-outbox")

    async def _flush(self) -> None:
        try:
            await self._flush_batches()
        except Exception:  # the store's: the next telemetry (or connection) tries again
            log.exception("telemetry outbox: flush failed")

    async def _flush_batches(self) -> None:
        outbox = self.port.outbox
        while batch := outbox.pending(REPLAY_BATCH):
            live = self._live_seq
            payloads = [p if seq == live else json.dumps({**json.loads(p), "replayed": True}).encode()
                        for seq, p in batch]
            # Pipelined: publishes leave in call order (MQTT keeps the order of one session's QoS 1
            # messages), and the batch counts as sent when the broker has acknowledged every one.
            sent = await self.link.publish_many([(TELEMETRY, p, False) for p in payloads])
            if not all(sent):
                # The broker went away again: the batch stays, to go again in full on the next
                # connection; a subscriber may then see a seq twice, never a gap.
                return
            if not await self.port.telemetry_sent(batch[-1][0]):
                return  # the store cannot be written: the batch stays, to go again with the next one
