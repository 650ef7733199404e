"""South-side fixtures: the simulated site on real loopback sockets, the gateway's drivers against it,
and pysunspec2's own (synchronous) client as an independent reference reader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from gateway.config import SiteFile
from gateway.south.device import Device
from gateway.south.factory import build_devices
from simulators.site import SiteSimulator
from tests.support.driven_site import DrivenSite


@pytest_asyncio.fixture
async def run_site(
    make_site: Callable[..., tuple[SiteFile, Any]],
) -> AsyncIterator[Callable[..., Awaitable[DrivenSite]]]:
    """`await run_site(**overrides)`: the example site (overrides as for `make_site`) simulated on free
    ports, with the gateway's drivers built and connected."""
    sites: list[DrivenSite] = []

    async def _run(**overrides: Any) -> DrivenSite:
        cfg, _ = make_site(**overrides)
        cfg.devices = [d for d in cfg.devices if d.protocol == "sunspec"]  # DNP3 has tests/dnp3
        sim = SiteSimulator(cfg)
        await sim.start()
        site = DrivenSite(cfg, sim, {})
        sites.append(site)
        site.devices = {d.id: d for d in build_devices(cfg, on_write=site.writes.append)}
        connected = await asyncio.gather(*(d.connect() for d in site.devices.values()))
        assert all(connected), [d.last_error for d in site.devices.values()]
        return site

    yield _run
    for site in sites:
        await asyncio.gather(*(d.close() for d in site.devices.values()))
        await site.sim.stop()


async def wait_until(what: str, check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10.0) -> None:
    """Poll `check` (sync or async) every 0.1 s until it is true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")
        await asyncio.sleep(0.1)


async def reading_of(device: Device, what: str, check: Callable[[Any], bool], timeout_s: float = 10.0) -> Any:
    """Read `device` until a reading satisfies `check`; returns that reading."""
    found: list[Any] = []

    async def _ok() -> bool:
        r = await device.read()
        if r is not None and check(r):
            found.append(r)
            return True
        return False

    await wait_until(f"{device.id}: {what}", _ok, timeout_s)
    return found[0]


def _reference_read(port: int, unit_id: int) -> dict[str, Any]:
    client = SunSpecModbusClientDeviceTCP(slave_id=unit_id, ipaddr="127.0.0.1", ipport=port, timeout=5)
    try:
        client.scan()
        model_ids = sorted(m for m in client.models if isinstance(m, int))
        out: dict[Any, Any] = {"base": client.base_addr, "models": model_ids}
        for mid in out["models"]:
            model = client.models[mid][0]
            out[mid] = {name: p.cvalue for name, p in model.points.items()}
        return out
    finally:
        client.close()


async def reference_read(port: int, unit_id: int = 1) -> dict[str, Any]:
    """What pysunspec2's own client reads: base address, model ids, {model id: {point: scaled value}}."""
    return await asyncio.to_thread(_reference_read, port, unit_id)
