"""Field-device fixtures: serial lines made of socat pseudo-terminal pairs, small site files built for
each test (RS-485 buses, converters, vendor profiles), the site simulated, the gateway's drivers on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
import tomli_w

from gateway.config import load_site
from gateway.south.factory import build_devices
from simulators.serial_pty import PtyPair
from simulators.site import SiteSimulator
from tests.support.driven_site import DrivenSite

FAST_SIM = {"physics": "light", "response_time_s": 0.2}


def rtu(line: PtyPair, unit_id: int, **device: Any) -> dict[str, Any]:
    """A device entry on the RS-485 line `line` (the gateway on one end, the simulator on the other)."""
    sim = {**FAST_SIM, "serial_port": line.device_end, **device.pop("sim", {})}
    return {"transport": "rtu", "serial": {"port": line.gateway_end, "baudrate": 115200}, "unit_id": unit_id,
            "timeout_s": 0.5, **device, "sim": sim}


@pytest_asyncio.fixture
async def line(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[PtyPair]]]:
    """`await line("bus1")`: a started pty pair, stopped (socat killed by its pid) after the test."""
    pairs: list[PtyPair] = []

    async def _line(name: str) -> PtyPair:
        pair = PtyPair(tmp_path / name)
        await pair.start()
        pairs.append(pair)
        return pair

    yield _line
    for pair in pairs:
        await pair.stop()


@pytest_asyncio.fixture
async def field_site(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[DrivenSite]]]:
    """`await field_site(devices=[...])`: a site of exactly these devices, simulated, drivers connected."""
    running: list[DrivenSite] = []

    async def _run(devices: list[dict[str, Any]], *, connect: bool = True) -> DrivenSite:
        data = {
            "site": {"id": "field", "resource_id": "DER-FIELD", "export_cap_kw": 1000.0,
                     "import_cap_kw": 1000.0, "control_interval_s": 0.5},
            "simulator": {"load_kw": 10.0, "irradiance_pu": 0.9},
            "devices": [{**d, "sim": {**FAST_SIM, **d.get("sim", {})}} for d in devices],
        }
        path = tmp_path / f"site-{len(running)}.toml"
        path.write_text(tomli_w.dumps(data), encoding="utf-8")
        cfg = load_site(path)
        sim = SiteSimulator(cfg)
        await sim.start()
        f = DrivenSite(cfg, sim, {})
        running.append(f)
        f.devices = {d.id: d for d in build_devices(cfg, on_write=f.writes.append)}
        if connect:
            ok = await asyncio.gather(*(d.connect() for d in f.devices.values()))
            assert all(ok), [str(d.last_error) for d in f.devices.values()]
        return f

    yield _run
    for f in reversed(running):
        await asyncio.gather(*(d.close() for d in f.devices.values()))
        await f.sim.stop()
