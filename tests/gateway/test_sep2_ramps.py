"""2030.5 ramps at the gateway (CSIP-AUS ALL-13, ALL-25, ALL-28): against the utility-server simulator over
real mutual TLS, the site's simulators over Modbus. The limit in force is read from the gateway's
telemetry (the core's decision) and its effect at the simulated meter; a ramp shows as a limit strictly
between the old and the new value, then the new one. No timing is asserted: each ramp is chosen to take
about 15 s, so that the 1 s telemetry cannot miss it, and every wait is for an event, with a timeout."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from gateway.north.sep2.codec import watts
from simulators.sep2_certs import Pki
from simulators.sep2_server import Posted, Sep2Server
from tests.gateway import test_sep2_gateway as base
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio
RAMP_S = 15.0  # about how long each ramp below takes
pki, server = base.pki, base.server  # the same simulated server, polled every second


@pytest_asyncio.fixture
async def site(make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server) -> Rig:
    return await make_rig(sections=base.sep2_sections(pki, server))


def settings_put(server: Sep2Server, set_grad_w: int) -> Posted | None:
    """The last DERSettings the gateway PUT, if it carries this setGradW."""
    puts = server.der_puts["derg"]
    return puts[-1] if puts and puts[-1].body.setGradW == set_grad_w else None


def grad_for(change_w: float, set_max_w: float) -> int:
    """The setGradW (hundredths of % of setMaxW per s) that moves a limit by change_w in about RAMP_S."""
    return max(1, round(change_w / RAMP_S / set_max_w * 10_000))


def limit(t: dict[str, Any]) -> float:
    return t["effective"]["export_limit_kw"]


def bound_by(mrid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda t: f"sep2:{mrid}" in t["effective"]["binding"]


def limits_seen(site: Rig, start: int) -> list[float]:
    """The export limit of every telemetry message since `start` (an index into what the peer saw)."""
    topic = f"{site.prefix}gateway/telemetry"
    return [limit(json.loads(p)) for t, p, _ in site.peer.messages[start:] if t == topic]


async def set_max_w(server: Sep2Server) -> float:
    put = await server.wait_for(lambda: settings_put(server, 0), timeout=20)
    return watts(put.body.setMaxW)


async def test_all_13_the_default_controls_set_grad_w_is_reported_in_der_settings_and_ramps_the_limit(
        site: Rig, server: Sep2Server) -> None:
    server.set_default(1, export_w=150_000)
    grad = grad_for(110_000, await set_max_w(server))  # no setGradW yet: 0 reported
    server.set_default(1, export_w=150_000, set_grad_w=grad)
    await server.wait_for(lambda: settings_put(server, grad), timeout=20)  # re-PUT with it
    await site.telemetry(lambda t: "sep2:dderc" in t["effective"]["binding"] and limit(t) == 150.0)
    mark = len(site.peer.messages)
    mrid = server.add_control(1, server.now(), 40, export_w=40_000)
    # down from the default's 150 kW to the control's 40 kW at setGradW (a tightening ramps too)
    await site.telemetry(lambda t: bound_by(mrid)(t) and 40.0 < limit(t) < 150.0, timeout=30)
    await site.telemetry(lambda t: bound_by(mrid)(t) and limit(t) == pytest.approx(40.0), timeout=60)
    await site.wait_meter(lambda p: p <= 40.5, timeout=30)
    # and back up to the default as the control ends, at the same rate
    await site.telemetry(lambda t: "sep2:dderc" in t["effective"]["binding"] and 40.0 < limit(t) < 150.0,
                         timeout=90)
    await site.telemetry(lambda t: limit(t) == pytest.approx(150.0), timeout=60)
    assert all(40.0 - 1e-6 <= kw <= 150.0 for kw in limits_seen(site, mark))  # never beyond either
    assert not server.errors


async def test_all_25_a_controls_ramp_tms_ramps_the_pcc_limit(site: Rig, server: Sep2Server) -> None:
    server.set_default(1, export_w=150_000)  # setGradW absent: only rampTms ramps
    await site.telemetry(lambda t: "sep2:dderc" in t["effective"]["binding"] and limit(t) == 150.0,
                         timeout=20)
    mark = len(site.peer.messages)
    mrid = server.add_control(1, server.now(), 120, export_w=40_000, ramp_tms=round(RAMP_S * 100))
    await site.telemetry(lambda t: bound_by(mrid)(t) and 40.0 < limit(t) < 150.0, timeout=30)
    await site.telemetry(lambda t: bound_by(mrid)(t) and limit(t) == pytest.approx(40.0), timeout=60)
    await site.wait_meter(lambda p: p <= 40.5, timeout=30)
    # from the old limit down: never above it (not from the connection agreement), never under the new
    assert all(40.0 - 1e-6 <= kw <= 150.0 for kw in limits_seen(site, mark))
    assert not server.errors


async def test_all_28_a_changed_set_grad_w_is_picked_up_reported_and_ramps_the_next_change(
        site: Rig, server: Sep2Server) -> None:
    server.set_default(1, export_w=150_000)
    grad = grad_for(60_000, await set_max_w(server))
    first = server.add_control(1, server.now(), 45, export_w=40_000)
    second = server.add_control(1, server.now() + 45, 120, export_w=100_000)  # follows the first
    await site.telemetry(lambda t: bound_by(first)(t) and limit(t) == 40.0, timeout=30)
    server.set_default(1, export_w=150_000, set_grad_w=grad)  # the ramp rate changes mid-control
    await server.wait_for(lambda: settings_put(server, grad), timeout=20)
    # the limit in force does not move for it (its envelope is replaced with a ramp of its own)
    mark = len(site.peer.messages)
    t = await site.telemetry(start=mark)
    assert bound_by(first)(t) and limit(t) == 40.0
    # the next change moves at the new rate: 40 → 100 kW as the second control takes over
    await site.telemetry(lambda t: bound_by(second)(t) and 40.0 < limit(t) < 100.0, timeout=90)
    await site.telemetry(lambda t: bound_by(second)(t) and limit(t) == pytest.approx(100.0), timeout=60)
    assert all(40.0 - 1e-6 <= kw <= 100.0 + 1e-6 for kw in limits_seen(site, mark))
    assert not server.errors
