"""The status page in a real browser (headless Chromium), during a short scenario: an IESO dispatch, an
LDC envelope below it, then a device that stops answering. Checked is what a person looking at the page
sees: the values, the limit that binds and who set it, the responses, the device going offline.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.rig import Rig
from tests.web.browser import Page
from tests.web.util import base_url, until

pytestmark = pytest.mark.asyncio

DOCS = Path(__file__).resolve().parents[2] / "docs"
# `make docs-images` sets it: the test then also refreshes the README's picture, with more of a chart.
DOCS_IMAGES = bool(os.environ.get("DER_GATEWAY_DOCS_IMAGES"))

# What the page shows, as text: the cards by title, each table's rows by id and column.
VIEW = """(() => {
  const cards = Object.fromEntries([...document.querySelectorAll(".card")]
    .map(c => [c.querySelector("h3").textContent, c.innerText]));
  const table = name => {
    const t = document.querySelector(`table[data-list=${name}]`);
    const cols = [...t.querySelectorAll("th")].map(th => th.dataset.col);
    return Object.fromEntries([...t.tBodies[0].rows].filter(tr => tr.dataset.id)
      .map(tr => [tr.dataset.id, Object.fromEntries([...tr.cells].map((td, i) => [cols[i], td.innerText]))]));
  };
  const banner = document.getElementById("banner");
  return {cards, instructions: table("instructions"), devices: table("devices"),
          caption: document.getElementById("chart-caption").textContent,
          banner: banner.hidden ? null : banner.innerText};
})()"""


async def wait_view(page: Page, pred: Callable[[dict[str, Any]], bool],
                    timeout: float = 20.0) -> dict[str, Any]:
    """The page's view once `pred(view)` holds (the page polls every 2 s)."""
    return await until(lambda: page.evaluate(VIEW), pred, "the page's view", timeout)


def points(view: dict[str, Any]) -> int:
    """How many points the chart has, from its caption ("42 points over the last 40 s")."""
    return int(view["caption"].split()[0]) if "points" in view["caption"] else 0


def kw(text: str) -> float:
    """'99.0 kW' → 99.0 (the first line of a card's value)."""
    return float(text.split(" kW")[0].split()[-1])


async def test_status_page_shows_the_binding_limit_its_source_and_a_device_going_offline(
        web_rig: Rig, page: Page, tmp_path: Path) -> None:
    rig = web_rig
    await page.open(base_url(rig) + "/")
    first = await wait_view(page, lambda v: points(v) > 0 and v["devices"]["pv2"]["state"] == "online")
    if DOCS_IMAGES:  # some history before the story starts
        await wait_view(page, lambda v: points(v) >= 30, timeout=60)

    mark = await rig.send("ieso", "dispatch", "disp-web", product="energy", kind="algorithmic",
                          target_kw=150.0, start=0, end=600)
    await rig.send("ldc", "envelope", "env-web", export_limit_kw=100.0, reason="thermal", start=0, end=600)
    await rig.response("disp-web", "constrained", start=mark)
    await rig.telemetry(lambda t: t["effective"]["binding"] == "envelope:env-web"
                        and t["site"]["p_kw"] <= 100.5, start=mark)

    view = await wait_view(page, lambda v: "env-web" in v["cards"]["Export limit"]
                           and kw(v["cards"]["PCC"]) <= 100.5)
    cards = view["cards"]
    # The limit that binds, its value and who set it, on the export limit and the target
    assert kw(cards["Export limit"]) == 100.0
    assert "LDC envelope env-web: export ≤ 100 kW (thermal)" in cards["Export limit"]
    assert "LDC envelope env-web" in cards["Target"]
    assert kw(cards["Import limit"]) == 400.0 and "connection agreement" in cards["Import limit"]
    assert "constrained" in cards["Mode"] and "disp-web" in cards["Mode"]
    assert [line.split()[:2] for line in cards["Comms"].splitlines()[1:4]] == \
        [["IESO", "ok"], ["LDC", "ok"], ["Broker", "connected"]]
    # The same numbers as the gateway's API
    async with aiohttp.ClientSession() as http, http.get(base_url(rig) + "/api/status") as r:
        api = (await r.json())["site"]
    assert kw(cards["Target"]) == round(api["target_kw"], 1)
    # and the meter's value: the page shows a reading up to a poll old, so while the output still
    # settles on the new limit it may show an earlier one; it must come to the meter's
    await wait_view(page, lambda v: abs(kw(v["cards"]["PCC"]) - rig.sim.meter_p_kw) < 5.0)
    # Active instructions with their response states
    disp, env = view["instructions"]["disp-web"], view["instructions"]["env-web"]
    assert (disp["issuer"], disp["state"], disp["status"], disp["reason"], disp["accepted_kw"]) == \
        ("IESO", "in force", "constrained", "DISTRIBUTION_CONSTRAINT", "100.0 kW")
    assert (env["issuer"], env["type"], env["status"]) == ("LDC", "envelope", "accepted")
    assert env["what"] == "export ≤ 100 kW (thermal)"
    # Devices with their state, output and setpoint
    devices = view["devices"]
    assert {d: devices[d]["state"] for d in devices} == {d.id: "online" for d in rig.site.devices}
    assert devices["bess1"]["setpoint_kw"].endswith(" kW") and devices["meter"]["setpoint_kw"] == "—"

    # A device stops answering: the page shows it offline, with its error, and the count drops
    rig.sim.devices["pv2"].set_fault("silent")
    view = await wait_view(page, lambda v: v["devices"]["pv2"]["state"] == "offline", timeout=30)
    assert "pv2" in view["devices"]["pv2"]["error"]
    n = len(rig.site.devices)
    assert f"{n - 1}/{n} online" in view["cards"]["Comms"]
    assert view["devices"]["pv1"]["state"] == "online"
    assert points(view) > points(first)  # the chart goes on
    assert view["banner"] is None

    if DOCS_IMAGES:
        await wait_view(page, lambda v: points(v) >= points(view) + 15, timeout=60)
    shot = tmp_path / "status-page.png"
    await page.screenshot(shot)
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # the PNG's IHDR
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and width > 1200 and height > 600
    if DOCS_IMAGES:
        shutil.copy(shot, DOCS / "status-page.png")


async def test_page_says_so_when_the_gateway_cannot_be_reached(web_rig: Rig, page: Page) -> None:
    await page.open(base_url(web_rig) + "/")
    await wait_view(page, lambda v: points(v) > 0)
    await web_rig.stop_gateway()
    view = await wait_view(page, lambda v: v["banner"] is not None)
    assert view["banner"].startswith("Cannot reach the gateway since")
