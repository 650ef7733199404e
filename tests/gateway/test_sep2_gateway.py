"""The gateway as an IEEE 2030.5 (CSIP-AUS 1.2) client: against the utility-server simulator over real
mutual TLS, with the site's simulators over Modbus, the effect read at the simulated meter. Tests are
named after the CSIP-AUS client procedures they follow."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from gateway.north.sep2.model import COMPLETED, RECEIVED, STARTED
from simulators.sep2_certs import Pki, make_pki
from simulators.sep2_server import Sep2Server
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio
RATES = ("dcap", "edevl", "fsal", "derpl", "derl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture
async def server(pki: Pki) -> AsyncIterator[Sep2Server]:
    srv = Sep2Server(pki)
    for resource in RATES:
        srv.set_poll_rate(resource, 1)  # every list polled each second: tests see a change at once
    srv.set_post_rate(2)
    srv.multiplier = 1  # limits in tens of W, as envoy's site_control_pow10_encoding: the client scales back
    await srv.start()
    yield srv
    await srv.stop()


def sep2_sections(pki: Pki, server: Sep2Server, **sep2: Any) -> dict[str, dict[str, Any]]:
    return {"sep2": {"enabled": True, "server": server.dcap_url, "ca": str(pki.ca_cert),
                     "cert": str(pki.client_cert), "key": str(pki.client_key), **sep2},
            "ldc": {"default_envelope": "sep2"}}


@pytest_asyncio.fixture
async def site(make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server) -> Rig:
    return await make_rig(sections=sep2_sections(pki, server))


def statuses(server: Sep2Server, mrid: str) -> list[int]:
    return [r.status for r in server.responses if r.subject == mrid]


async def test_all_02_gen_01_registers_in_band_and_an_export_limit_control_holds_at_the_pcc(
        site: Rig, server: Sep2Server) -> None:
    before = site.sim.meter_p_kw
    assert before > 60
    mrid = server.add_control(1, server.now() - 1, 120, export_w=40_000)
    await site.wait_meter(lambda p: p <= 40.5, timeout=20)
    t = await site.telemetry(lambda t: f"sep2:{mrid}" in t["effective"]["binding"])
    assert t["effective"]["export_limit_kw"] == pytest.approx(40.0)
    await server.wait_for(lambda: statuses(server, mrid)[:2] == [RECEIVED, STARTED], timeout=10)
    # in-band registration under the certificate's LFDI, and the reports a CSIP-AUS client owes
    await server.wait_for(lambda: all(server.der_puts[name] for name in ("dercap", "derg", "ders")))
    await server.wait_for(lambda: len(server.mirror_usage_points) == 2 and server.readings, timeout=10)
    assert not server.errors  # every body the gateway sent was valid against the CSIP-AUS 1.2 XSDs


async def test_all_18_a_control_that_ends_is_completed_and_the_site_returns_to_the_default(
        site: Rig, server: Sep2Server) -> None:
    server.set_default(1, export_w=150_000)
    mrid = server.add_control(1, server.now() - 1, 6, export_w=30_000)
    await site.wait_meter(lambda p: p <= 30.5, timeout=20)
    await server.wait_for(lambda: statuses(server, mrid) == [RECEIVED, STARTED, COMPLETED], timeout=20)
    t = await site.telemetry(lambda t: "sep2:dderc" in t["effective"]["binding"], timeout=20)
    assert t["effective"]["export_limit_kw"] == pytest.approx(150.0)
    assert not server.errors


async def test_all_23_tdc_17_the_default_control_applies_when_the_server_is_unreachable_past_the_schedule(
        site: Rig, server: Sep2Server) -> None:
    server.set_default(1, export_w=20_000)
    mrid = server.add_control(1, server.now() - 1, 8, export_w=60_000)
    await site.telemetry(lambda t: f"sep2:{mrid}" in t["effective"]["binding"], timeout=20)
    server.fail(500)  # the server goes away while the control runs
    await site.wait_meter(lambda p: p <= 20.5, timeout=30)  # its end passes: the default, from what was read
    status = await site.wait_status(lambda s: any("2030.5 server" in a for a in s["alarms"]))
    assert any("following the schedule received" in a for a in status["alarms"])
    server.clear_faults()  # ALL-30: back, and nothing was lost
    await site.wait_status(lambda s: not any("2030.5 server" in a for a in s["alarms"]), timeout=20)


async def test_p_06_a_429_with_retry_after_is_waited_out(site: Rig, server: Sep2Server) -> None:
    await server.wait_for(lambda: server.requested("GET", "/edev/1/derp/1/derc"), timeout=10)
    server.throttle(3)
    await site.wait_status(lambda s: any("throttles" in a for a in s["alarms"]), timeout=10)
    first = server.requests[-1].mono
    server.clear_faults()
    await server.wait_for(lambda: server.requests[-1].mono > first + 2.5
                          and server.requests[-1].status == 200, timeout=10)
    throttled = [r for r in server.requests if r.status == 429]
    assert len(throttled) == 1  # nothing asked again before Retry-After had passed


async def test_all_03_rej_a_registration_pin_that_is_not_the_sites_stops_the_client_and_alarms(
        make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server) -> None:
    server.pin = 222220
    rig = await make_rig(sections=sep2_sections(pki, server, pin=111115))
    mrid = server.add_control(1, server.now() - 1, 120, export_w=10_000)
    status = await rig.wait_status(lambda s: any("Registration PIN" in a for a in s["alarms"]), timeout=15)
    assert any("222220" in a and "111115" in a for a in status["alarms"])
    t = await rig.telemetry(start=len(rig.peer.messages))
    assert mrid not in t["effective"]["binding"] and rig.sim.meter_p_kw > 10.5
    assert not server.requested("GET", "/edev/1/derp/1/derc")


async def test_tdc_10_a_limit_arriving_over_2030_5_and_mqtt_is_applied_once_the_most_restrictive_binding(
        site: Rig, server: Sep2Server) -> None:
    mrid = server.add_control(1, server.now() - 1, 120, export_w=50_000)
    await site.telemetry(lambda t: f"sep2:{mrid}" in t["effective"]["binding"], timeout=20)
    mark = await site.send("ldc", "envelope", "env-mqtt", start=0, end=300, export_limit_kw=70.0,
                           reason="thermal")
    await site.response("env-mqtt", "accepted", start=mark)
    t = await site.telemetry(start=mark)
    assert f"sep2:{mrid}" in t["effective"]["binding"] and t["effective"]["export_limit_kw"] == 50.0
    mark = await site.send("ldc", "envelope", "env-mqtt-2", start=0, end=300, export_limit_kw=35.0,
                           reason="thermal")
    t = await site.telemetry(lambda t: "env-mqtt-2" in t["effective"]["binding"], start=mark)
    assert t["effective"]["export_limit_kw"] == 35.0
    await site.wait_meter(lambda p: p <= 35.5)


async def test_a_control_in_another_csip_aus_namespace_is_refused_and_alarmed_never_read_as_no_limit(
        site: Rig, server: Sep2Server) -> None:
    kept = server.add_control(1, server.now() - 1, 120, export_w=60_000)
    await site.telemetry(lambda t: f"sep2:{kept}" in t["effective"]["binding"], timeout=20)
    # a CSIP-AUS 1.3 server now: envoy-schema 1.x would read its limits as None, with no error
    server.csipaus_namespace = "https://csipaus.org/ns/v1.3"
    server.add_control(1, server.now() - 1, 120, export_w=90_000, creation_time=server.now() + 1)
    status = await site.wait_status(lambda s: any("csipaus.org/ns/v1.3" in a for a in s["alarms"]),
                                    timeout=15)
    assert any("following the schedule received" in a for a in status["alarms"])
    t = await site.telemetry(start=len(site.peer.messages))
    assert t["effective"]["export_limit_kw"] == 60.0  # the newer control is not taken as "no limit"
    assert any(kept in ref for ref in site.gateway.info().active)


async def test_a_server_clock_off_by_more_than_the_bound_is_an_alarm_and_event_times_follow_it(
        make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server) -> None:
    server.clock_offset_s = 120.0  # the server's clock two minutes ahead of the box's
    rig = await make_rig(sections=sep2_sections(pki, server, max_clock_skew_s=60))
    # /tm has whole seconds: the offset measured is 119 or 120 s
    status = await rig.wait_status(lambda s: any(re.search(r"clock is \+1(19|20) s", a) for a in s["alarms"]),
                                   timeout=15)
    assert any("max_clock_skew_s = 60" in a for a in status["alarms"])
    # a control that started on the server's clock is in force now, although its start is ahead of ours
    mrid = server.add_control(1, server.now() - 30, 120, export_w=45_000)
    await rig.wait_meter(lambda p: p <= 45.5, timeout=20)
    t = await rig.telemetry(start=len(rig.peer.messages))
    assert f"sep2:{mrid}" in t["effective"]["binding"] or t["effective"]["export_limit_kw"] == 45.0
