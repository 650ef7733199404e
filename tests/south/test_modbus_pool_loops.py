"""A Modbus pool outliving its event loop (a library user running asyncio.run twice): its requests still
time out on the next loop. Plain (not pytest-asyncio) tests: each makes its own loops."""

from __future__ import annotations

import asyncio

import pytest

from gateway.south.modbus_client import ModbusPool, ModbusTimeout

BASE = 1000


def test_a_pool_used_again_on_a_new_event_loop_still_times_its_requests_out() -> None:
    """Timeouts are armed by the pool's sweep (InFlight): one left behind on an ended loop must not
    leave the requests of the next loop without any."""

    async def mute_server() -> asyncio.Server:
        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()

        return await asyncio.start_server(never_answer, "127.0.0.1", 0)

    pool = ModbusPool()

    async def read_silent(timeout_s: float) -> None:
        mute = await mute_server()
        try:
            unit = pool.unit("127.0.0.1", mute.sockets[0].getsockname()[1], 1, timeout_s=timeout_s)
            with pytest.raises(ModbusTimeout):
                await asyncio.wait_for(unit.read(BASE, 1), 10.0)  # a hang fails, not a timeout
            await unit.close()
        finally:
            mute.close()

    async def first_loop() -> None:
        # ends while the sweep is still scheduled: a request that gave its place up is still out
        mute = await mute_server()
        unit = pool.unit("127.0.0.1", mute.sockets[0].getsockname()[1], 1, timeout_s=5.0)
        task = asyncio.create_task(unit.read(BASE, 1))
        await asyncio.sleep(0.05)
        task.cancel()
        mute.close()

    asyncio.run(first_loop())
    asyncio.run(read_silent(0.3))
