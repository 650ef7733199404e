from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from gateway.config import SiteFile
from simulators.site import SiteSimulator


@pytest_asyncio.fixture
async def start_site(
    make_site: Callable[..., tuple[SiteFile, Path]],
) -> AsyncIterator[Callable[..., Any]]:
    """`sim = await start_site(**overrides)`: the example site (steady load) running in-process."""
    running: list[SiteSimulator] = []

    async def _start(**overrides: Any) -> SiteSimulator:
        overrides["simulator"] = {"load_variation_kw": 0.0, **overrides.get("simulator", {})}
        site, _ = make_site(**overrides)
        sim = SiteSimulator(site)
        await sim.start()
        running.append(sim)
        return sim

    yield _start
    for sim in running:
        await sim.stop()
