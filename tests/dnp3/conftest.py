"""DNP3 tests: the example site (with its DNP3 inverter and SCADA outstation) on real sockets, and the
SCADA master of the simulators (dnp3py) against the gateway's outstation (opendnp3)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from simulators.scada_master import ScadaMaster
from tests.gateway.conftest import broker, make_rig, rig  # the gateway tests' rig, shared
from tests.support.rig import Rig

__all__ = ["broker", "make_rig", "rig"]


@pytest_asyncio.fixture
async def scada(rig: Rig) -> AsyncIterator[ScadaMaster]:
    """The LDC's SCADA master, connected to the rig's gateway, select-before-operate."""
    async with ScadaMaster.for_site(rig.site) as master:
        yield master
