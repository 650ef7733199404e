"""/metrics (Prometheus text, parsed with prometheus_client's own parser), /api/status and the
server-rendered page, against a running gateway in the rig."""

from __future__ import annotations

import socket
from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import WebSection
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto
from tests.support.rig import Rig
from tests.web.util import base_url, until

pytestmark = pytest.mark.asyncio


async def scrape(rig: Rig) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    async with aiohttp.ClientSession() as http, http.get(base_url(rig) + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def wait_metric(rig: Rig, name: str, labels: dict[str, str], pred: Callable[[float], bool],
                      timeout: float = 20.0) -> float | None:
    key = (name, tuple(sorted(labels.items())))

    async def value() -> float | None:
        return (await scrape(rig)).get(key)

    return await until(value, lambda v: v is not None and pred(v), f"{name}{labels}", timeout)


async def test_metrics_count_polls_errors_decisions_responses_and_read_the_store(web_rig: Rig) -> None:
    rig = web_rig
    mark = await rig.send("ieso", "dispatch", "disp-m", product="energy", kind="algorithmic",
                          target_kw=150.0, start=0, end=600)
    await rig.send("ldc", "envelope", "env-m", export_limit_kw=100.0, reason="thermal", start=0, end=600)
    await rig.response("disp-m", "constrained", start=mark)
    await wait_metric(rig, "der_gateway_decisions_total", {"binding": "envelope"}, lambda v: v >= 1)

    m = await scrape(rig)
    for device in rig.site.devices:
        assert m[("der_gateway_device_poll_seconds_count", (("device", device.id),))] >= 1
        assert m[("der_gateway_device_online", (("device", device.id), ("kind", device.kind)))] == 1
    assert m[("der_gateway_responses_total", (("role", "ieso"), ("status", "received")))] == 1
    assert m[("der_gateway_responses_total", (("role", "ieso"), ("status", "constrained")))] >= 1
    assert m[("der_gateway_responses_total", (("role", "ldc"), ("status", "accepted")))] == 1
    assert m[("der_gateway_export_limit_decisions_total", (("binding", "envelope"),))] >= 1
    cycles = m[("der_gateway_control_cycle_seconds_count", ())]
    assert cycles >= 1 and m[("der_gateway_control_cycle_seconds_sum", ())] > 0
    assert m[("der_gateway_control_cycle_seconds_bucket", (("le", "+Inf"),))] == cycles
    assert m[("der_gateway_export_limit_kw", ())] == 100.0
    assert m[("der_gateway_mode", (("der_gateway_mode", "constrained"),))] == 1
    assert m[("der_gateway_audit_records_total", ())] > 0  # inbound messages, decisions, writes
    assert m[("der_gateway_outbox_depth", ())] >= 0
    assert m[("der_gateway_uptime_seconds", ())] > 0
    assert m[("der_gateway_info", (("site_id", "site-001"), ("version", "0.1.0")))] == 1

    # A device that stops answering: its failed polls are counted, and it shows offline
    rig.sim.devices["pv2"].set_fault("silent")
    await wait_metric(rig, "der_gateway_device_poll_errors_total", {"device": "pv2", "error": "offline"},
                      lambda v: v >= 1, timeout=30)
    await wait_metric(rig, "der_gateway_device_online", {"device": "pv2", "kind": "pv"}, lambda v: v == 0)
    assert ("der_gateway_device_poll_errors_total", (("device", "pv1"), ("error", "offline"))) not in \
        await scrape(rig)


async def test_api_status_sends_the_chart_points_after_since_and_the_page_is_rendered_on_the_server(
        web_rig: Rig) -> None:
    rig = web_rig
    mark = await rig.send("ldc", "envelope", "env-<b>", export_limit_kw=80.0, reason="voltage",
                          start=0, end=600)
    await rig.response("env-<b>", "accepted", start=mark)
    await rig.telemetry(lambda t: t["effective"]["binding"] == "envelope:env-<b>", start=mark)
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url(rig) + "/api/status?since=0") as r:
            everything = await r.json()
        history = everything["history"]
        assert len(history["t"]) >= 2 and set(history) == {"t", "pcc_kw", "target_kw", "export_limit_kw",
                                                           "import_limit_kw"}
        assert history["export_limit_kw"][-1] == 80.0
        last = history["t"][-1]
        async with http.get(base_url(rig) + f"/api/status?since={last}") as r:
            newer = (await r.json())["history"]
        assert all(t > last for t in newer["t"])
        async with http.get(base_url(rig) + "/api/status") as r:
            assert (await r.json())["history"] is None  # the terminal view needs no chart
        async with http.get(base_url(rig) + "/api/status?since=yesterday") as r:
            assert r.status == 400
        async with http.get(base_url(rig) + "/") as r:
            page = await r.text()
    # Without running its script, the page already says what binds and who set it; an id from MQTT is
    # escaped, never markup.
    assert 'data-k="site.export_limit_kw" data-f="kw">80.0 kW<' in page
    assert "LDC envelope env-&lt;b&gt;: export ≤ 80 kW (voltage)" in page
    assert "env-<b>" not in page


async def test_a_web_port_already_taken_leaves_the_gateway_controlling(
        mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        site = example_site()
        site.web = WebSection(enabled=True, port=taken.getsockname()[1])
        rig = Rig(site, mosquitto.url)
        await rig.start()  # returns once the gateway is online and has read every device
        try:
            mark = await rig.send("ieso", "dispatch", "disp-p", product="energy", kind="algorithmic",
                                  target_kw=120.0, start=0, end=600)
            await rig.response("disp-p", "accepted", start=mark)
        finally:
            await rig.stop()
    assert any("cannot listen" in r.getMessage() and "[web] port" in r.getMessage() for r in caplog.records)
