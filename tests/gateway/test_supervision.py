"""Supervision, not collapse: a task of the gateway that fails is logged, counted in /metrics, raised as an
alarm in `status` and restarted, while control goes on. Before, the gateway's tasks were joined so that the
first exception in any of them stopped the whole process."""

from __future__ import annotations

import asyncio

import pytest

from gateway import supervisor
from gateway.app import Gateway
from gateway.config import WebSection
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto, free_port
from tests.gateway.test_tdc_failsafe import dispatch, envelope
from tests.support.rig import Rig
from tests.web.test_metrics_and_api import wait_metric
from tests.web.util import until

pytestmark = pytest.mark.asyncio
LIMIT = 100.0


async def test_a_task_that_fails_is_restarted_counted_and_alarmed_while_the_limit_holds(
        broker: Mosquitto) -> None:
    site = example_site()
    site.web = WebSection(enabled=True, port=free_port())
    rig = Rig(site, broker.url)
    runs = 0

    async def flaky() -> None:  # an optional face (Gateway.services) with a bug that fires twice
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"bug number {runs}")
        await asyncio.Event().wait()

    def add_flaky(gw: Gateway) -> None:
        gw.services.append(flaky)

    await rig.start(gateway=False)
    try:
        await rig.start_gateway(prepare=add_flaky)
        mark = await rig.send("ldc", "envelope", "e-s", **envelope(LIMIT))
        await rig.send("ieso", "dispatch", "d-s", **dispatch(250.0))
        status = await rig.wait_status(lambda s: any("flaky" in a for a in s["alarms"]), start=mark)
        alarm = next(a for a in status["alarms"] if "flaky" in a)
        assert "restarted" in alarm and "RuntimeError: bug number" in alarm
        assert status["state"] == "online"
        await wait_metric(rig, "der_gateway_task_restarts_total",
                          {"task": "test_a_task_that_fails_is_restarted_counted_and_alarmed_while_the_limit_"
                                   "holds.<locals>.flaky"}, lambda v: v >= 2)
        await until(lambda: asyncio.sleep(0, runs), lambda n: n == 3, "the third run", timeout=10)
        assert rig.gateway is not None and rig.gateway.supervisor.failures[next(
            n for n in rig.gateway.supervisor.failures if n.endswith("flaky"))].count == 2
        # control went on throughout: the dispatch is held under the envelope at the meter
        await rig.response("d-s", "constrained", start=mark)
        await rig.wait_meter(lambda p: LIMIT - 10.0 <= p <= LIMIT)
    finally:
        await rig.stop()


async def test_the_stop_ends_even_when_a_task_swallows_its_cancellation(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # As asyncio.wait_for does on 3.11 when the cancellation comes as its event is set (cpython
    # gh-86296): the control loop ran on after the gateway was stopped, and CI's run hung in teardown.
    monkeypatch.setattr(supervisor, "STOP_S", 0.2)
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()

    sup = supervisor.Supervisor()
    task = sup.spawn("stubborn", stubborn)
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await sup.stop()
    assert swallowed.is_set() and task.cancelled()
    assert "task stubborn still running" in caplog.text
