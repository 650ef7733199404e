"""Modbus TCP client side: the only module that imports pymodbus's client.

- One connection per TCP endpoint (host, port). Several unit ids behind one endpoint (a Modbus
  gateway, a plant controller) share it, with one request in flight at a time: many devices and
  gateways cannot queue requests, so requests are serialised with a lock. Parallelism comes from
  talking to several endpoints at once, never from pipelining on one.
- Timeouts are per unit (each device's `timeout_s` from the site file) and are ours, not pymodbus's:
  pymodbus's own timeout counts retries and closes the connection on its own schedule, which would
  cut off every other unit behind a shared endpoint when one of them goes silent.
- Reconnect is ours too (pymodbus's automatic reconnect is switched off), with capped exponential
  backoff and jitter; while waiting, requests fail at once instead of queueing behind a dead link.
- Every failure is one of three errors: `ModbusTimeout`, `ModbusExceptionResponse` (with the code),
  `ModbusConnectionLost`. Nothing of pymodbus leaks out of this module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from gateway.south.backoff import Backoff

MAX_READ_REGISTERS = 125  # FC3 limit of the Modbus spec
MAX_WRITE_REGISTERS = 123  # FC16 limit of the Modbus spec

# After this many consecutive requests without any answer on an endpoint, its connection is re-made:
# a device that rebooted without closing its sockets (power cut) leaves a half-open connection that
# would otherwise swallow requests forever. Answers from any unit reset the count, so one silent unit
# behind a shared gateway does not cut off the others.
SILENT_REQUESTS_BEFORE_RECONNECT = 3

# Well above any per-unit timeout: ours (asyncio.wait_for) always fires first.
_PYMODBUS_TIMEOUT_S = 3600.0

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_GATEWAY_TARGET_NO_RESPONSE = 11


class ModbusError(Exception):
    """A failed Modbus request. Exactly one of the three subclasses below is raised."""


class ModbusTimeout(ModbusError):
    """No answer within the unit's timeout (or a gateway answered 0x0B: its target did not answer)."""


class ModbusConnectionLost(ModbusError):
    """No usable connection: refused, closed by the peer, or waiting for the next reconnect attempt."""


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ModbusEndpoint:
    """One TCP connection to (host, port), shared by every unit id behind it."""

    def __init__(self, host: str, port: int, *, backoff: Backoff | None = None) -> None:
        self.host = host
        self.port = port
        self._backoff = backoff or Backoff()
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._silent_requests = 0
        # Incremented at every successful connect. A driver that sees it change knows that the
        # connection was re-made, so the device may have rebooted and lost its volatile registers.
        self.generation = 0

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def request(
        self,
        unit_id: int,
        timeout_s: float,
        what: str,
        call: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]],
    ) -> ModbusPDU:
        """Run one request (connecting first if needed); `what` describes it for error messages."""
        where = f"{self} unit {unit_id}: {what}"
        async with self._lock:
            client = await self._connected_client(timeout_s, where)
            try:
                response = await asyncio.wait_for(call(client), timeout_s)
            except TimeoutError:
                if not client.connected:
                    self._drop()
                    raise ModbusConnectionLost(f"{where}: connection lost") from None
                self._silent_requests += 1
                if self._silent_requests >= SILENT_REQUESTS_BEFORE_RECONNECT:
                    self._drop()
                raise ModbusTimeout(f"{where}: no answer within {timeout_s:g} s") from None
            except (ModbusException, OSError) as err:
                # Not connected, or an answer that does not match the request: the stream cannot be
                # trusted any more, so start again on a fresh connection.
                self._drop()
                raise ModbusConnectionLost(f"{where}: {err}") from None
            self._silent_requests = 0
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            if code == _GATEWAY_TARGET_NO_RESPONSE:
                raise ModbusTimeout(f"{where}: gateway reports no answer from the unit (exception 11)")
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise ModbusExceptionResponse(f"{where}: exception {code} ({name})", code)
        return response

    async def _connected_client(self, timeout_s: float, where: str) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        now = time.monotonic()
        wait = self._backoff.wait_s(now)
        if wait > 0:
            raise ModbusConnectionLost(f"{where}: not connected; next attempt in {wait:.1f} s")
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=_PYMODBUS_TIMEOUT_S, retries=0, reconnect_delay=0
        )
        try:
            ok = await asyncio.wait_for(client.connect(), timeout_s)
        except TimeoutError:
            ok = False
        if not ok:
            client.close()
            delay = self._backoff.failed(time.monotonic())
            raise ModbusConnectionLost(f"{where}: cannot connect; next attempt in {delay:.1f} s")
        self._backoff.succeeded()
        self._client = client
        self._silent_requests = 0
        self.generation += 1
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        async with self._lock:
            self._drop()


class ModbusUnit:
    """One unit id behind an endpoint, with its own timeout: what a device driver talks to."""

    def __init__(self, endpoint: ModbusEndpoint, unit_id: int, timeout_s: float, pool: ModbusPool) -> None:
        self.endpoint = endpoint
        self.unit_id = unit_id
        self.timeout_s = timeout_s
        self._pool = pool
        self._closed = False

    def __str__(self) -> str:
        return f"{self.endpoint} unit {self.unit_id}"

    @property
    def generation(self) -> int:
        """See `ModbusEndpoint.generation`."""
        return self.endpoint.generation

    async def read(self, address: int, count: int) -> list[int]:
        """Holding registers [address, address + count), in requests of at most 125 registers."""
        self._check_open()
        out: list[int] = []
        for start in range(address, address + count, MAX_READ_REGISTERS):
            n = min(MAX_READ_REGISTERS, address + count - start)
            response = await self.endpoint.request(
                self.unit_id,
                self.timeout_s,
                f"read {n} registers at {start}",
                lambda c, start=start, n=n: c.read_holding_registers(start, count=n, device_id=self.unit_id),
            )
            registers = list(getattr(response, "registers", []))
            if len(registers) < n:
                got = len(registers)
                raise ModbusConnectionLost(f"{self}: read at {start}: {got} of {n} registers came back")
            out.extend(registers[:n])
        return out

    async def write(self, address: int, values: Sequence[int]) -> None:
        """Write holding registers with FC16 (the function code SunSpec requires for writes)."""
        if not 0 < len(values) <= MAX_WRITE_REGISTERS:
            raise ValueError(f"a write takes 1 to {MAX_WRITE_REGISTERS} registers, not {len(values)}")
        self._check_open()
        await self.endpoint.request(
            self.unit_id,
            self.timeout_s,
            f"write {len(values)} registers at {address}",
            lambda c: c.write_registers(address, list(values), device_id=self.unit_id),
        )

    def _check_open(self) -> None:
        if self._closed:  # a closed unit must not reopen a connection the pool no longer tracks
            raise ModbusConnectionLost(f"{self}: closed")

    async def close(self) -> None:
        """Release this unit for good; the endpoint's connection is closed with its last unit."""
        if not self._closed:
            self._closed = True
            await self._pool.release(self.endpoint)


class ModbusPool:
    """Endpoints by (host, port): devices behind one TCP endpoint share one connection and one lock."""

    def __init__(self, backoff_factory: Callable[[], Backoff] = Backoff) -> None:
        self._backoff_factory = backoff_factory
        self._endpoints: dict[tuple[str, int], ModbusEndpoint] = {}
        self._users: dict[tuple[str, int], int] = {}

    def unit(self, host: str, port: int, unit_id: int, timeout_s: float) -> ModbusUnit:
        key = (host, port)
        if key not in self._endpoints:
            self._endpoints[key] = ModbusEndpoint(host, port, backoff=self._backoff_factory())
            self._users[key] = 0
        self._users[key] += 1
        return ModbusUnit(self._endpoints[key], unit_id, timeout_s, self)

    async def release(self, endpoint: ModbusEndpoint) -> None:
        key = (endpoint.host, endpoint.port)
        if self._endpoints.get(key) is not endpoint:
            return  # the pool was closed under it
        self._users[key] -= 1
        if self._users[key] == 0:
            del self._users[key], self._endpoints[key]
            await endpoint.close()

    async def close(self) -> None:
        """Close every endpoint: at shutdown, after which its units are not used any more."""
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        self._users.clear()
        for endpoint in endpoints:
            await endpoint.close()
