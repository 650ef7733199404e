"""The control path against a broker that misbehaves (TDC-11, TDC-19): a broker that stops answering
without closing its socket (mosquitto stopped with SIGSTOP) must not delay a decision on its way to the
devices; an instruction is acknowledged to the broker only once it is journalled, so a gateway killed
between the two gets it again; and what waits for the broker is bounded, with an alarm past the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.metrics import Metrics
from gateway.protocol.codec import decode_inbound
from gateway.store.db import open_db
from simulators.battery import Battery
from simulators.dnp3_der import Dnp3PvInverter
from simulators.example_site import example_site
from simulators.inverter import PvInverter
from simulators.mosquitto import Mosquitto
from simulators.scada_master import ScadaMaster
from tests.gateway.test_tdc_failsafe import GatewayProcess
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio
TOL = 3.0
CONTROLLABLE = ("pv1", "pv2", "bess1", "pv3")


def commanded_kw(dev: Any) -> float | None:
    """The most the device was last told to put out, as its registers or points have it now (its output
    follows with its ramp); None when it has no limit."""
    if isinstance(dev, PvInverter):
        return dev.read_controls().cap_kw
    if isinstance(dev, Battery):
        m = dev.map
        return (m.eng(704, "WSet") or 0.0) / 1000.0 if m.get(704, "WSetEna") == 1 else None
    assert isinstance(dev, Dnp3PvInverter), type(dev)
    return None if dev.active_limit_pct is None else dev.active_limit_pct * dev.rated_kw / 100.0


async def _until(pred: Callable[[], bool], timeout: float) -> float:
    """Wait for pred() (checked every 10 ms); the wall-clock time it was first seen to hold."""
    async def wait() -> float:
        while not pred():
            await asyncio.sleep(0.01)
        return time.time()

    return await asyncio.wait_for(wait(), timeout)


@contextlib.contextmanager
def stopped(broker: Mosquitto) -> Iterator[None]:
    """The broker stops answering but keeps its sockets open (SIGSTOP), until the block ends."""
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.proc.send_signal(signal.SIGCONT)


def _ldc_answer(rig: Rig, prefix: str, status: str) -> Callable[[str, bytes], bool]:
    def match(topic: str, payload: bytes) -> bool:
        body = json.loads(payload)
        return (topic == rig.prefix + "gateway/response/ldc" and body.get("ref", "").startswith(prefix)
                and body["status"] == status)

    return match


async def test_tdc_11_a_broker_that_stops_answering_delays_no_scada_trip(broker: Mosquitto, rig: Rig) -> None:
    # A dispatch that starts once the broker has stopped: its `started` is the first answer a control
    # cycle has for the broker then, and the cycles after it must not wait for it.
    mark = await rig.send("ieso", "dispatch", "d-11", product="energy", kind="algorithmic", target_kw=150.0,
                          start=3, end=600)
    await rig.response("d-11", "accepted", start=mark)
    async with ScadaMaster.for_site(rig.site, select_before_operate=False) as scada:
        with stopped(broker):
            await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL, timeout=20)  # started and served
            sent = time.time()
            await scada.stop()  # BO2 ON: cease to energize, decided and journalled; its answers wait
            devs = [rig.sim.devices[dev_id] for dev_id in CONTROLLABLE]
            # watched together, so that each is seen within 10 ms of the write that set it
            seen = await asyncio.gather(*(_until(lambda d=d: commanded_kw(d) == 0.0, timeout=10)
                                          for d in devs))
            for dev_id, dev, at in zip(CONTROLLABLE, devs, seen, strict=True):
                # the write that set it, by the simulator's own clock
                written = max(w for w in dev.writes_at if w <= at)
                assert written - sent <= 1.0, f"{dev_id} commanded {written - sent:.2f} s after the stop"
    # once the broker answers again, what was queued for it arrives
    await rig.response("d-11", "started", start=mark)
    await rig.peer.wait_for(_ldc_answer(rig, "scada-stop-", "accepted"), start=mark)
    await rig.wait_status(lambda s: any(a.startswith("scada-stop-") for a in s["active"]), start=mark)


async def test_past_the_mqtt_queue_bound_the_oldest_answers_go_with_an_alarm_and_a_metric(
    broker: Mosquitto,
) -> None:
    site = example_site()
    site.mqtt.max_queued_messages = 10
    gw = Gateway(site, broker.url)  # not running: its link never connects, as in a long broker outage
    try:
        for _ in range(15):  # each an `error` answer, queued for the broker
            await gw.submit(decode_inbound("ldc", "envelope", b"{broken"), source="mqtt")
        assert gw.mqtt.link.outgoing.depth == 10
        (alarm,) = gw.mqtt.status().alarms
        assert "5 oldest" in alarm and "mqtt.max_queued_messages = 10" in alarm
        metrics = (await Metrics(gw).render()).decode()
        assert "der_gateway_mqtt_queue_dropped_total 5.0" in metrics
        assert "der_gateway_mqtt_queue_depth 10.0" in metrics
    finally:
        gw.store.close()


@contextlib.contextmanager
def store_locked(path: Path) -> Iterator[None]:
    """Another process's exclusive lock on the gateway's store: every write of the gateway blocks (and
    fails after SQLite's busy timeout), so nothing it receives meanwhile reaches its journal."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def test_tdc_19_an_instruction_received_but_not_journalled_is_redelivered_and_answered_once(
    make_rig, tmp_path: Path,
) -> None:
    # no telemetry during the test (its write is not guarded against a locked store)
    rig: Rig = await make_rig(gateway=False, telemetry_interval_s=86_400.0)
    gw = GatewayProcess(rig, tmp_path)
    log_path = tmp_path / "gateway.log"
    try:
        with log_path.open("wb") as log:
            gw.start(output=log)
            await rig.wait_status(lambda s: s["state"] == "online", timeout=30)
            with store_locked(rig.site.store.path):
                mark = await rig.send("ldc", "envelope", "e-19r", export_limit_kw=100.0, reason="thermal",
                                      start=0, end=300)

                async def waits_for_the_store() -> None:
                    # the gateway has the message and waits for its journal (SQLite's busy timeout, 5 s):
                    # it says so, naming the message
                    while "envelope e-19r from ldc (mqtt) waits for the store" not in log_path.read_text():
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(waits_for_the_store(), 60)
                gw.kill()  # before its journal ever takes it
            assert not rig.responses("e-19r", start=mark)
            gw.start(output=log)
            # the broker delivers it again (it was never acknowledged), and it is answered as new, once
            await rig.response("e-19r", "accepted", start=mark, timeout=30)
            await rig.wait_meter(lambda p: p <= 100.0 + TOL, timeout=20)
            # one more after it, answered: anything delivered before it has been answered too
            await rig.send("ldc", "envelope", "e-19s", export_limit_kw=100.0, reason="thermal", start=0,
                           end=300)
            await rig.response("e-19s", "accepted", start=mark)
            statuses = [r["status"] for r in rig.responses("e-19r", start=mark)]
            assert statuses.count("received") == 1 and statuses.count("accepted") == 1, statuses
            assert not {"constrained", "rejected"} & set(statuses), statuses
    finally:
        gw.stop()
    conn = open_db(rig.site.store.path)
    inbound = [json.loads(rec) for kind, rec in conn.execute("SELECT kind, record FROM audit ORDER BY seq")
               if kind == "inbound"]
    assert [r["id"] for r in inbound if r.get("id") == "e-19r"] == ["e-19r"]
