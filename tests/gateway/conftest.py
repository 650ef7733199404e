from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto
from tests.support.rig import Rig


@pytest.fixture
def broker(tmp_path: Path):
    m = Mosquitto(tmp_path)
    m.start()
    yield m
    m.stop()


@pytest_asyncio.fixture
async def make_rig(broker: Mosquitto) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """`await make_rig(comms_timeout_s=3)`: the example site with those [site] fields, gateway running."""
    rigs: list[Rig] = []

    async def _make(gateway: bool = True, devices: dict[str, dict[str, Any]] | None = None,
                    sections: dict[str, dict[str, Any]] | None = None, **site_overrides: Any) -> Rig:
        rig = Rig(example_site(devices, sections, **site_overrides), broker.url)
        rigs.append(rig)
        await rig.start(gateway=gateway)
        return rig

    yield _make
    for rig in rigs:
        await rig.stop()


@pytest_asyncio.fixture
async def rig(make_rig: Callable[..., Awaitable[Rig]]) -> Rig:
    return await make_rig()
