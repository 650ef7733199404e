"""SiteSimulator lifecycle: every port listens after start(), none after stop(); a busy port is reported."""

from __future__ import annotations

import asyncio
import socket

import pytest

from simulators.site import SiteSimulator

pytestmark = pytest.mark.asyncio


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def test_start_listens_everywhere_and_stop_closes_everything(make_site) -> None:
    site, _ = make_site()
    ports = [d.port for d in site.devices] + [site.simulator.control_port]
    sim = SiteSimulator(site)
    await sim.start()
    assert all([await accepts(p) for p in ports])
    await sim.stop()
    assert not any([await accepts(p) for p in ports])
    await sim.stop()  # idempotent


async def test_a_busy_port_fails_start_and_leaves_nothing_listening(make_site) -> None:
    site, _ = make_site()
    busy = site.devices[-1].port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", busy))
        blocker.listen()
        sim = SiteSimulator(site)
        with pytest.raises(OSError, match=str(busy)):
            await sim.start()
        others = [d.port for d in site.devices if d.port != busy]
        assert not any([await accepts(p) for p in others])
