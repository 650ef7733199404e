"""PROTOCOL §6 and §8: comms loss (TDC-17, TDC-18), restart (TDC-19), device reversion (TDC-20),
store-and-forward (TDC-21) and the audit log (TDC-23). Real processes where the rule is about one dying.

The example site: PV 250 + 150 kW at 0.9 irradiance, a 200 kW battery, a steady 120 kW load; its
default envelope (applied when the LDC link is lost) caps export at 50 kW.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import pytest
import tomli_w

from gateway.north.mqtt import MqttPeer
from gateway.store.audit import verify
from gateway.store.db import open_db
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio
TOL = 3.0


def dispatch(target_kw: float, end: float = 300) -> dict:
    return {"product": "energy", "kind": "algorithmic", "target_kw": target_kw, "start": 0, "end": end}


def envelope(export_kw: float, end: float = 300) -> dict:
    return {"export_limit_kw": export_kw, "reason": "thermal", "start": 0, "end": end}


@contextlib.asynccontextmanager
async def heartbeats(rig: Rig, role: str) -> AsyncIterator[None]:
    """Keep one role's link alive (a heartbeat a second) while the other one goes quiet."""

    async def beat() -> None:
        n = 0
        while True:
            n += 1
            await rig.send(role, "heartbeat", f"hb-{role}-{n}")
            await asyncio.sleep(1.0)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Sampler:
    """Watches the simulated meter in the background and keeps the highest PCC it saw."""

    def __init__(self, rig: Rig) -> None:
        self.rig, self.highest = rig, float("-inf")
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.highest = max(self.highest, self.rig.sim.meter_p_kw)
            await asyncio.sleep(0.05)

    async def stop(self) -> float:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.highest


class GatewayProcess:
    """`der-gateway run` as a real process, for the rules about a gateway that dies."""

    def __init__(self, rig: Rig, tmp_path: Path) -> None:
        self.site_file = tmp_path / "site.toml"
        self.site_file.write_text(tomli_w.dumps(rig.site.model_dump(mode="json", exclude_none=True)))
        self.url = rig.url
        self.proc: subprocess.Popen | None = None

    def start(self, output: IO[bytes] | None = None) -> None:
        """Started; its logs (JSON lines) to `output`, or to the test's own stdout."""
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "run",
                "--site",
                str(self.site_file),
                "--broker",
                self.url,
                "--log-level",
                "warning",
            ],
            stdout=output,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def test_tdc_17_ldc_lost_envelopes_run_to_their_end_then_the_default_envelope(make_rig) -> None:
    rig: Rig = await make_rig(comms_timeout_s=3.0)
    async with heartbeats(rig, "ieso"):
        mark = await rig.send("ieso", "dispatch", "d-17", **dispatch(200.0))
        await rig.send("ldc", "envelope", "e-17", **envelope(100.0, end=10))
        await rig.response("e-17", "started", start=mark)
        # nothing more from the LDC: after comms_timeout_s its link is lost
        status = await rig.wait_status(lambda s: s["comms"]["ldc"] == "lost", start=mark, timeout=15)
        assert status["comms"]["ieso"] == "ok" and status["mode"] == "failsafe"
        t = await rig.telemetry(start=len(rig.peer.messages))
        assert t["effective"]["binding"] == "envelope:e-17"  # the stored envelope still runs
        assert rig.sim.meter_p_kw <= 100.0 + TOL
        await rig.response("e-17", "completed", start=mark, timeout=15)
        t = await rig.telemetry(lambda t: t["effective"]["binding"] == "default_envelope", start=mark)
        assert t["effective"]["export_limit_kw"] == pytest.approx(50.0)
        assert t["effective"]["mode"] == "failsafe"
        await rig.wait_meter(lambda p: p <= 50.0)


async def test_tdc_18_market_lost_dispatch_runs_to_its_end_then_the_default_mode(make_rig) -> None:
    rig: Rig = await make_rig(comms_timeout_s=3.0)
    async with heartbeats(rig, "ldc"):
        mark = await rig.send("ieso", "dispatch", "d-18", **dispatch(150.0, end=10))
        await rig.response("d-18", "started", start=mark)
        status = await rig.wait_status(lambda s: s["comms"]["ieso"] == "lost", start=mark, timeout=15)
        assert status["comms"]["ldc"] == "ok"
        await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL)  # still served
        t = await rig.telemetry(start=len(rig.peer.messages))
        assert t["serving"] == [{"ref": "d-18", "kw": pytest.approx(150.0)}]
        await rig.response("d-18", "completed", start=mark, timeout=15)
        t = await rig.telemetry(lambda t: t["effective"]["binding"] == "default_mode", start=mark)
        assert t["serving"] == []
        # default mode: PV at its available power (≈ 387 kW) and the battery idle, less the 120 kW load
        await rig.wait_meter(lambda p: abs(p - 267.0) <= 3 * TOL)


async def test_tdc_19_killed_gateway_restarts_with_its_limits_and_answers_nothing_twice(
    make_rig, tmp_path: Path
) -> None:
    rig: Rig = await make_rig(gateway=False)
    gw = GatewayProcess(rig, tmp_path)
    gw.start()
    try:
        await rig.wait_status(lambda s: s["state"] == "online", timeout=30)
        mark = await rig.send("ldc", "envelope", "e-19", **envelope(100.0))
        await rig.send("ieso", "dispatch", "d-19", **dispatch(200.0))
        await rig.response("d-19", "constrained", start=mark)
        await rig.wait_meter(lambda p: 100.0 - 3 * TOL <= p <= 100.0)

        sampler = Sampler(rig)
        gw.kill()
        mark = len(rig.peer.messages)
        await rig.wait_status(lambda s: s["state"] == "offline", start=mark)
        gw.start()
        await rig.wait_status(lambda s: s["state"] == "online", start=mark, timeout=30)
        t = await rig.telemetry(lambda t: t["site"]["p_kw"] is not None, start=mark)
        assert t["effective"]["binding"] == "envelope:e-19"
        assert t["serving"] == [{"ref": "d-19", "kw": pytest.approx(100.0)}]
        await asyncio.sleep(0)  # let a redelivered message (if any) be answered before we look
        await rig.telemetry(start=len(rig.peer.messages))
        assert await sampler.stop() <= 100.0 + TOL  # the limit held through the kill and the restart
        # nothing was answered twice as new: no second received/accepted/started for either
        for ref in ("e-19", "d-19"):
            again = [r["status"] for r in rig.responses(ref, start=mark)]
            assert "started" not in again and "received" not in again, (ref, again)
    finally:
        gw.stop()
    # and the log says what happened: the restart, then a decision under the restored envelope
    conn = open_db(rig.site.store.path)
    rows = [
        (kind, json.loads(rec)) for kind, rec in conn.execute("SELECT kind, record FROM audit ORDER BY seq")
    ]
    restored = next(i for i, (kind, rec) in enumerate(rows) if kind == "event" and rec["event"] == "restored")
    assert set(rows[restored][1]["active"]) >= {"e-19", "d-19"}
    first_decision = next(rec for kind, rec in rows[restored:] if kind == "decision")
    assert first_decision["export_binding"] == "envelope:e-19"
    first_write = next(i for i, (kind, _) in enumerate(rows) if i > restored and kind == "write")
    assert first_write > restored + 1  # the decision came first


async def test_tdc_20_killed_gateway_leaves_each_device_reverting_on_its_own_timer(
    make_rig, tmp_path: Path
) -> None:
    rig: Rig = await make_rig(
        gateway=False,
        devices={
            "pv1": {"reversion_timeout_s": 4.0, "safe_limit_pct": 20.0},
            "bess1": {"reversion_timeout_s": 4.0},
        },
    )
    gw = GatewayProcess(rig, tmp_path)
    gw.start()
    try:
        await rig.wait_status(lambda s: s["state"] == "online", timeout=30)
        mark = await rig.send("ldc", "envelope", "e-20", **envelope(100.0))
        await rig.send("ieso", "dispatch", "d-20", **dispatch(300.0))
        await rig.response("d-20", "constrained", start=mark)
        await rig.wait_meter(lambda p: 100.0 - 3 * TOL <= p <= 100.0)
        # the gateway refreshes the setpoints: they hold longer than the reversion timeout while it runs
        await asyncio.sleep(6)  # > 4 s: a setpoint that were not refreshed would have reverted by now
        pv1, bess1, pv2 = (rig.sim.devices[i] for i in ("pv1", "bess1", "pv2"))
        held_limit = pv1.active_limit_pct
        assert held_limit is not None and held_limit > 20.0
        assert abs(bess1.p_kw) > 1.0
        pv2_limit = pv2.active_limit_pct
        gw.kill()
    finally:
        gw.stop()

    # pv1 reverts to the lower of its safe limit (20 %) and its share of the LDC's 100 kW envelope (by
    # rating: 100 × 250 / 630 kW = 39.7 kW, 15.87 % of 250 kW): the share
    revert_pct = min(20.0, _share_kw(rig, 100.0, "pv1") / 250.0 * 100)
    assert revert_pct < 20.0

    async def reverted() -> None:
        while not (pv1.active_limit_pct == pytest.approx(revert_pct, abs=0.01) and abs(bess1.p_kw) < 1.0):
            await asyncio.sleep(0.1)

    await asyncio.wait_for(reverted(), 15)
    # the legacy (123) inverter has no reversion value: it keeps the gateway's last limit rather than
    # reverting to full output
    assert pv2.active_limit_pct == pytest.approx(pv2_limit, abs=1.0)


def _share_kw(rig: Rig, limit_kw: float, device_id: str) -> float:
    """A device's share of an LDC limit, by rating, as the core computes what it reverts to."""
    rated = {d.id: d.sim.rated_kw for d in rig.site.devices if d.kind != "meter"}
    return limit_kw * rated[device_id] / sum(rated.values())


def _timers_run_out(rig: Rig, device_ids: tuple[str, ...]) -> bool:
    """No reversion timer of these SunSpec simulators is running any more (each ran out, or none was set)."""
    return all(r.deadline is None for i in device_ids for r in rig.sim.devices[i].reversions)


async def _stays(rig: Rig, check: Callable[[dict[str, Any]], str | None], seconds: float) -> None:
    """`check(devices)` (None = fine, else what is wrong) holds at every look for `seconds`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        wrong = check(rig.sim.devices)
        assert wrong is None, wrong
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def gateway_process(rig: Rig, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """`der-gateway run` started and online; stopped on the way out if the test has not killed it."""
    gw = GatewayProcess(rig, tmp_path)
    gw.start()
    try:
        await rig.wait_status(lambda s: s["state"] == "online", timeout=30)
        yield gw
    finally:
        gw.stop()


FAST_REVERSION = {dev: {"reversion_timeout_s": 3.0} for dev in ("pv1", "pv2", "bess1", "pv3")}


async def test_tdc_20_killed_during_cease_to_energize_every_device_stays_at_0(
    make_rig, tmp_path: Path
) -> None:
    """A gateway that dies during a protection trip must not let the inverters back on: each device of the
    example site (1547 PV, legacy PV, battery, DNP3 PV) is at 0 kW after its reversion timer, and stays."""
    rig: Rig = await make_rig(gateway=False, devices=FAST_REVERSION)
    async with gateway_process(rig, tmp_path) as gw:
        mark = await rig.send("ieso", "dispatch", "d-20c", **dispatch(150.0))
        await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL)
        await rig.send("ldc", "override", "o-20c", action="cease_to_energize", reason="protection", start=0)
        await rig.response("o-20c", "started", start=mark)
        load = rig.site.simulator.load_kw
        await rig.wait_meter(lambda p: abs(p + load) <= TOL)
        gw.kill()
    # the 1547 PV and the battery revert on their timers, to 0; the legacy and DNP3 PVs have no reversion
    # value, and were written with no timeout: they keep their 0 % limit
    await asyncio.wait_for(_until(lambda: _timers_run_out(rig, ("pv1", "bess1", "pv2"))), 15)
    assert rig.sim.devices["pv3"].reversion_s == 0  # type: ignore[union-attr]
    assert rig.sim.devices["pv1"].active_limit_pct == pytest.approx(0.0)

    def at_zero(devices: dict[str, Any]) -> str | None:
        moving = {i: devices[i].p_kw for i in ("pv1", "pv2", "bess1", "pv3") if abs(devices[i].p_kw) >= 1.0}
        return f"back on after the gateway died: {moving}" if moving else None

    await _stays(rig, at_zero, 3.0)  # a reverted limit would have shown within its 1 s response time
    assert abs(rig.sim.meter_p_kw + load) <= TOL


async def test_tdc_20_killed_under_a_tight_envelope_the_1547_pv_reverts_to_its_share(
    make_rig, tmp_path: Path
) -> None:
    """Under a 30 kW export envelope the 1547 PV reverts to its share of it (30 × 250 / 630 kW = 11.9 kW,
    4.76 %), not to the site file's safe_limit_pct (20 %, 50 kW)."""
    rig: Rig = await make_rig(gateway=False, devices=FAST_REVERSION)
    async with gateway_process(rig, tmp_path) as gw:
        mark = await rig.send("ldc", "envelope", "e-20t", **envelope(30.0))
        await rig.response("e-20t", "started", start=mark)
        await rig.wait_meter(lambda p: 30.0 - 3 * TOL <= p <= 30.0)
        pv2 = rig.sim.devices["pv2"]
        pv2_limit = pv2.active_limit_pct
        gw.kill()
    share_kw = _share_kw(rig, 30.0, "pv1")
    pv1 = rig.sim.devices["pv1"]
    await asyncio.wait_for(_until(lambda: _timers_run_out(rig, ("pv1", "bess1"))), 15)
    assert pv1.active_limit_pct == pytest.approx(share_kw / 250.0 * 100, abs=0.01)
    bess1 = rig.sim.devices["bess1"]
    await asyncio.wait_for(_until(lambda: abs(pv1.p_kw - share_kw) <= 0.5 and abs(bess1.p_kw) < 1.0), 10)
    # the legacy (123) and DNP3 PVs keep the gateway's last limit (the README says so of maps without a
    # reversion value): no timer runs on them
    assert _timers_run_out(rig, ("pv2",)) and pv2.active_limit_pct == pytest.approx(pv2_limit, abs=1.0)
    assert rig.sim.devices["pv3"].reversion_s == 0  # type: ignore[union-attr]


async def _until(pred: Callable[[], bool]) -> None:
    while not pred():
        await asyncio.sleep(0.1)


async def test_tdc_21_broker_outage_telemetry_is_kept_and_replayed_in_order(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, persistence=True)
    broker.start()
    rig = Rig(example_site(), broker.url)
    rig.peer = MqttPeer(broker.url, client_id="tdc21-peer", persistent=True)
    try:
        await rig.start()
        await rig.telemetry(start=len(rig.peer.messages))
        last_before = json.loads([p for t, p, _ in rig.peer.messages if t.endswith("telemetry")][-1])["seq"]
        await rig.peer.__aexit__(None, None, None)
        broker.stop()
        await asyncio.sleep(5)  # five telemetry intervals with no broker: they go to the outbox
        assert rig.gateway is not None and rig.gateway.store.outbox.depth() >= 3
        stored_up_to = rig.gateway.mqtt.telemetry_seq
        broker.start()
        rig.peer = MqttPeer(broker.url, client_id="tdc21-peer", persistent=True)  # the same session
        await rig.peer.__aenter__()
        live = await rig.telemetry(lambda t: not t["replayed"] and t["seq"] > stored_up_to, timeout=30)
        seqs = [
            (m["seq"], m["replayed"])
            for m in (json.loads(p) for t, p, _ in rig.peer.messages if t.endswith("gateway/telemetry"))
        ]
        # contiguous from where the subscriber was, in order, the backlog marked replayed
        numbers = [s for s, _ in seqs if s > last_before]
        assert numbers == list(range(last_before + 1, live["seq"] + 1)), seqs
        assert sum(r for _, r in seqs) >= 3, seqs
        assert all(r for s, r in seqs if s < live["seq"] and s > last_before)
        assert rig.gateway.store.outbox.depth() <= 1
    finally:
        await rig.stop()
        broker.stop()


async def test_tdc_23_every_message_decision_and_write_is_in_the_audit_log(rig: Rig) -> None:
    mark = await rig.send("ldc", "envelope", "e-23", **envelope(100.0))
    await rig.send("ieso", "dispatch", "d-23", **dispatch(200.0))
    await rig.publish("ieso", "dispatch", b"{broken")
    await rig.response("d-23", "constrained", start=mark)
    await rig.wait_meter(lambda p: p <= 100.0)
    await rig.telemetry(start=len(rig.peer.messages))
    conn = open_db(rig.site.store.path)
    records = [(k, json.loads(r)) for k, r in conn.execute("SELECT kind, record FROM audit ORDER BY seq")]
    inbound = [r for k, r in records if k == "inbound"]
    assert {r.get("id") for r in inbound} >= {"e-23", "d-23", None}
    assert any(r["payload"] == "{broken" and r["invalid"] == "SCHEMA_INVALID" for r in inbound)
    assert any(json.loads(r["payload"])["target_kw"] == 200.0 for r in inbound if r.get("id") == "d-23")
    decisions = [r for k, r in records if k == "decision"]
    assert any(r["export_binding"] == "envelope:e-23" and r["target_kw"] == 100.0 for r in decisions)
    beats = [r for k, r in records if k == "write" and r["purpose"] == "heartbeat"]
    writes = [r for k, r in records if k == "write" and r["purpose"] != "heartbeat"]
    # a record per write request, with its points and values in the order written: the limit, then enable
    requests = [[p for p, _ in w["points"]] for w in writes
                if w["device_id"] == "pv1" and w["result"] == "ok"]
    limit = ["704.WMaxLimPct", "704.WMaxLimPctRvrt", "704.WMaxLimPctEnaRvrt", "704.WMaxLimPctRvrtTms"]
    assert requests.index(["704.WMaxLimPctEna"]) > requests.index(limit)
    assert any(w["device_id"] == "bess1" and "704.WSet" in [p for p, _ in w["points"]] for w in writes)
    # the 715 heartbeats that went through: a record a cycle, naming each device and the value written
    assert any(b["point"] == "715.ControllerHb" and b["devices"].get("pv1", 0) > 0 for b in beats)
    outbound = [r for k, r in records if k == "outbound"]
    assert any(
        '"status":"constrained"' in r["payload"] and r["topic"] == "gateway/response/ieso" for r in outbound
    )
    assert verify(conn).ok

    # the command finds an edited record and names it
    conn.execute(
        "UPDATE audit SET record = replace(record, '200.0', '20.0') WHERE kind = 'inbound' "
        "AND record LIKE '%d-23%'"
    )
    seq = conn.execute("SELECT seq FROM audit WHERE kind = 'inbound' AND record LIKE '%d-23%'").fetchone()[0]
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "verify", "--db", str(rig.site.store.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"record {seq}" in out.stdout and "edited" in out.stdout
