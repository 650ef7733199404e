"""The Modbus client against a real pymodbus server on loopback: errors, timeouts, reconnect, sharing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from gateway.south.modbus_client import (
    SILENT_REQUESTS_BEFORE_RECONNECT,
    ModbusConnectionLost,
    ModbusExceptionResponse,
    ModbusPool,
    ModbusTimeout,
)
from simulators.modbus_server import Fault, ModbusEndpoint
from tests.south.conftest import wait_until

pytestmark = pytest.mark.asyncio

BASE = 1000


class Bank:
    """A plain block of holding registers (what a simulator's device serves, minus the device)."""

    def __init__(self, count: int) -> None:
        self.base = BASE
        self.regs = list(range(count))

    @property
    def end(self) -> int:
        return self.base + len(self.regs)

    def read(self, address: int, count: int) -> list[int]:
        return self.regs[address - self.base : address - self.base + count]

    def write(self, address: int, values: list[int]) -> list[int]:
        self.regs[address - self.base : address - self.base + len(values)] = values
        return values


@pytest_asyncio.fixture
async def serve(free_port) -> AsyncIterator[Callable[..., Awaitable[ModbusEndpoint]]]:
    """`await serve(unit_ids=(1,), port=None)`: a Modbus TCP endpoint with one 300-register bank per unit."""
    endpoints: list[ModbusEndpoint] = []

    async def _serve(unit_ids: tuple[int, ...] = (1,), port: int | None = None) -> ModbusEndpoint:
        ep = ModbusEndpoint("127.0.0.1", port or free_port())
        for uid in unit_ids:
            ep.add_unit(uid, Bank(300))
        await ep.start()
        endpoints.append(ep)
        return ep

    yield _serve
    for ep in endpoints:
        await ep.stop()


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[ModbusPool]:
    p = ModbusPool()
    yield p
    await p.close()


async def test_read_write_and_reads_longer_than_one_request(serve, pool: ModbusPool) -> None:
    ep = await serve()
    unit = pool.unit(ep.host, ep.port, 1, timeout_s=1.0)
    assert await unit.read(BASE, 300) == list(range(300))  # three requests: 125 + 125 + 50
    await unit.write(BASE + 10, [7, 8, 9])
    assert await unit.read(BASE + 9, 5) == [9, 7, 8, 9, 13]


async def test_exception_response_carries_its_code(serve, pool: ModbusPool) -> None:
    ep = await serve()
    unit = pool.unit(ep.host, ep.port, 1, timeout_s=1.0)
    with pytest.raises(ModbusExceptionResponse, match=r"exception 2 \(illegal data address\)") as err:
        await unit.read(BASE + 300, 2)
    assert err.value.code == 2
    ep.set_fault(1, Fault("exception", exception_code=6))
    with pytest.raises(ModbusExceptionResponse) as err:
        await unit.read(BASE, 2)
    assert err.value.code == 6


async def test_unknown_unit_behind_a_gateway_is_a_timeout(serve, pool: ModbusPool) -> None:
    ep = await serve()
    with pytest.raises(ModbusTimeout, match="exception 11"):
        await pool.unit(ep.host, ep.port, 9, timeout_s=1.0).read(BASE, 2)


async def test_units_share_one_connection_and_a_silent_one_does_not_cut_off_the_other(
    serve, pool: ModbusPool
) -> None:
    ep = await serve(unit_ids=(1, 2))
    one = pool.unit(ep.host, ep.port, 1, timeout_s=1.0)
    two = pool.unit(ep.host, ep.port, 2, timeout_s=0.2)
    assert one.endpoint is two.endpoint
    assert await one.read(BASE, 1) == [0]
    generation = one.generation
    ep.set_fault(2, Fault("silent"))

    for _ in range(SILENT_REQUESTS_BEFORE_RECONNECT - 1):
        with pytest.raises(ModbusTimeout, match=r"no answer within 0\.2 s"):
            await two.read(BASE, 1)
        assert await one.read(BASE, 1) == [0]  # an answer on the line resets the count
    assert one.generation == generation, "answers kept coming: the connection stays"

    # Nothing answers any more: after a few silent requests the connection is made anew, in case it
    # is half-open (a device that lost power keeps no socket to close).
    for _ in range(SILENT_REQUESTS_BEFORE_RECONNECT):
        with pytest.raises(ModbusTimeout):
            await two.read(BASE, 1)
    assert await one.read(BASE, 1) == [0]
    assert one.generation == generation + 1


async def test_refused_connection_backs_off_then_connects(serve, pool: ModbusPool, free_port) -> None:
    port = free_port()
    unit = pool.unit("127.0.0.1", port, 1, timeout_s=1.0)
    with pytest.raises(ModbusConnectionLost, match="cannot connect; next attempt in"):
        await unit.read(BASE, 1)
    with pytest.raises(ModbusConnectionLost, match="not connected; next attempt in"):
        await unit.read(BASE, 1)  # within the backoff delay: fails at once, no connection attempt

    await serve(port=port)

    async def answers() -> bool:
        try:
            return await unit.read(BASE, 1) == [0]
        except ModbusConnectionLost:
            return False

    await wait_until("connected after the backoff delay", answers, timeout_s=5.0)


async def test_server_going_away_is_connection_lost(serve, pool: ModbusPool) -> None:
    ep = await serve()
    unit = pool.unit(ep.host, ep.port, 1, timeout_s=1.0)
    assert await unit.read(BASE, 1) == [0]
    await ep.stop()
    with pytest.raises(ModbusConnectionLost):
        await unit.read(BASE, 1)


async def test_a_late_answer_is_never_taken_for_the_next_one(serve, pool: ModbusPool) -> None:
    ep = await serve()
    impatient = pool.unit(ep.host, ep.port, 1, timeout_s=0.2)
    patient = pool.unit(ep.host, ep.port, 1, timeout_s=2.0)
    ep.set_fault(1, Fault("slow", delay_s=0.6))
    with pytest.raises(ModbusTimeout):
        await impatient.read(BASE, 1)  # its answer ([0]) comes while the next request waits
    ep.set_fault(1, Fault())
    assert await patient.read(BASE + 5, 1) == [5]
    assert await patient.read(BASE + 6, 1) == [6]


async def test_a_request_left_unanswered_gives_up_its_in_flight_place(serve) -> None:
    """A dead device must not hold the healthy ones back: with one place in flight, a request that
    gets no answer gives the place up (IN_FLIGHT_HOLD_S) long before its own timeout."""
    heard = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the request is out, and holds the only place
        heard.set()
        await reader.read()  # until the client closes

    mute = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    healthy = await serve()
    pool = ModbusPool(max_in_flight=1)
    try:
        dead = pool.unit("127.0.0.1", mute.sockets[0].getsockname()[1], 1, timeout_s=5.0)
        stuck = asyncio.create_task(dead.read(BASE, 1))
        await asyncio.wait_for(heard.wait(), 5.0)
        assert await pool.unit(healthy.host, healthy.port, 1, timeout_s=1.0).read(BASE, 1) == [0]
        assert not stuck.done(), "the healthy read waited for the dead device's timeout"
        stuck.cancel()
    finally:
        await pool.close()
        mute.close()
