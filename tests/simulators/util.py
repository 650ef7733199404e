"""Helpers for the simulator tests: waiting for observable events, and pysunspec2 as the reference reader."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from gateway.config import DeviceConfig


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `check()` (plain or async) until it returns something truthy, and return that; fail after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.05)


class SunSpecReader:
    """pysunspec2's own (synchronous) client, run in a thread: an independent view of a simulator."""

    def __init__(self, cfg: DeviceConfig) -> None:
        self._dev = SunSpecModbusClientDeviceTCP(
            slave_id=cfg.unit_id, ipaddr=cfg.host, ipport=cfg.port, timeout=5
        )

    async def __aenter__(self) -> SunSpecReader:
        await asyncio.to_thread(self._dev.scan)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._dev.close)

    @property
    def model_ids(self) -> list[int]:
        return sorted(k for k in self._dev.models if isinstance(k, int))

    @property
    def base_addr(self) -> int:
        return self._dev.base_addr

    async def read(self, model_id: int) -> dict[str, Any]:
        """Every point of the model, scale factors applied (None = not implemented)."""
        model = self._dev.models[model_id][0]
        await asyncio.to_thread(model.read)
        return {name: p.cvalue for name, p in model.points.items()}

    async def write(self, model_id: int, **values: float) -> None:
        """Write engineering values (pysunspec2 scales them); only the given points are written."""
        model = self._dev.models[model_id][0]
        for name, value in values.items():
            model.points[name].cvalue = value
        await asyncio.to_thread(model.write)
