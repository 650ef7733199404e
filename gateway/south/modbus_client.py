"""Modbus client side (TCP, RTU on a serial line, RTU framing over TCP): the only module that imports
pymodbus's client.

- A *bus* is one TCP endpoint (host, port) or one serial port (an RS-485 line), described by a
  `BusSpec`; it has one connection. Several unit ids on one bus (a multi-drop RS-485 line, a Modbus
  gateway, a TCP-to-RTU converter, a plant controller) share it, with one request in flight at a time:
  a serial line cannot carry two, and many devices and gateways cannot queue requests, so requests are
  serialised with a lock (FIFO, so the units on a bus are served in turn). Parallelism comes from
  talking to several buses at once, never from pipelining on one.
- Between two requests on a bus the line is left quiet for the bus's gap (`BusSpec.gap_s`; on a serial
  line at least the 3.5 character times of Modbus RTU): slow RS-485 devices and converters drop a
  request that follows the last answer too closely.
- Timeouts are per unit (each device's `timeout_s` from the site file) and are ours, not pymodbus's:
  pymodbus's own timeout counts retries and closes the connection on its own schedule, which would
  cut off every other unit behind a shared endpoint when one of them goes silent.
- Reconnect (reopen, for a serial port) is ours too (pymodbus's automatic reconnect is switched off),
  with capped exponential backoff and jitter, per bus; while waiting, requests on that bus fail at once
  instead of queueing behind a dead link, and other buses are not affected.
- Every failure is one of three errors: `ModbusTimeout`, `ModbusExceptionResponse` (with the code),
  `ModbusConnectionLost`. Nothing of pymodbus leaks out of this module.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from gateway.south.backoff import Backoff

MAX_READ_REGISTERS = 125  # FC3 limit of the Modbus spec
MAX_WRITE_REGISTERS = 123  # FC16 limit of the Modbus spec

# After this many consecutive requests without any answer on an endpoint, its connection is re-made:
# a device that rebooted without closing its sockets (power cut) leaves a half-open connection that
# would otherwise swallow requests forever. Answers from any unit reset the count, so one silent unit
# behind a shared gateway does not cut off the others.
SILENT_REQUESTS_BEFORE_RECONNECT = 3

# Requests in flight at once over all the buses of a pool. A thousand devices answering together would
# hand the event loop a thousand callbacks in one turn, and an instruction arriving meanwhile would wait
# behind all of them (receipt latency); in waves of this size a turn stays within ~5 ms, while enough
# requests are out that slow answers (a busy device, a long round trip) do not throttle the polling.
MAX_IN_FLIGHT = 128
# A request still unanswered after this long gives up its place (and goes on waiting for its answer):
# slow or dead devices must not hold the healthy ones back.
IN_FLIGHT_HOLD_S = 0.1

# Well above any per-unit timeout: ours (asyncio.timeout) always fires first.
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

Transport = Literal["tcp", "rtu", "rtu_over_tcp"]
Table = Literal["holding", "input"]  # FC3 / FC4
# Modbus over serial line (V1.02) §2.5.1.1: frames are separated by a silent interval of at least 3.5
# character times; above 19,200 baud a fixed 1.75 ms is recommended instead.
_RTU_SILENT_CHARS = 3.5
_RTU_MIN_SILENT_S = 0.00175


@dataclass(frozen=True)
class SerialLine:
    """The settings of a serial port (RS-485 through a USB or on-board adapter)."""

    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def silent_interval_s(self) -> float:
        """The RTU inter-frame silence: 3.5 characters (start, data, parity, stop bits) at this speed."""
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return max(_RTU_MIN_SILENT_S, _RTU_SILENT_CHARS * bits / self.baudrate)


@dataclass(frozen=True)
class BusSpec:
    """One bus: a TCP endpoint (Modbus TCP, or RTU frames through a TCP-to-RTU converter) or a serial
    port, and the quiet time left between two requests on it."""

    transport: Transport = "tcp"
    host: str = "127.0.0.1"
    port: int = 502
    serial: SerialLine | None = None
    gap_s: float = 0.0

    def __post_init__(self) -> None:
        if (self.transport == "rtu") != (self.serial is not None):
            raise ValueError("a serial line is needed for transport 'rtu', and only for it")
        if self.gap_s < 0:
            raise ValueError("gap_s must be >= 0")

    @property
    def key(self) -> tuple[str, ...]:
        """What identifies the bus: two specs with one key must be one connection."""
        if self.serial is not None:
            return ("serial", self.serial.port)
        return ("tcp", self.host, str(self.port))

    @property
    def effective_gap_s(self) -> float:
        return max(self.gap_s, self.serial.silent_interval_s) if self.serial else self.gap_s

    def __str__(self) -> str:
        if self.serial is not None:
            return self.serial.port
        prefix = "rtu-over-tcp " if self.transport == "rtu_over_tcp" else ""
        return f"{prefix}{self.host}:{self.port}"


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


class InFlight:
    """Bounds the requests in flight (see MAX_IN_FLIGHT); each holds its place at most about `hold_s`.

    One sweep every `hold_s / 2` frees the places held too long, rather than a timer per request: at
    thousands of requests a second, arming and cancelling a timer each was a few percent of the
    polling's CPU. A place is so given up between `hold_s` and 1.5 × `hold_s` after it was taken. The
    sweep also arms the request's own timeout then (see `_Slot.expire`): a request answered within the
    hold, nearly every one, never has a timer.
    """

    def __init__(self, limit: int = MAX_IN_FLIGHT, hold_s: float = IN_FLIGHT_HOLD_S) -> None:
        self.places = asyncio.Semaphore(limit)
        self.hold_s = hold_s
        self._taken: dict[_Slot, float] = {}  # held places and when they were taken (loop time)
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None

    def slot(self) -> _Slot:
        return _Slot(self)

    def take(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        self._taken[slot] = loop.time()
        # a sweep left on an event loop that has ended will never run: start one on this loop
        if self._sweep is None or self._sweep_loop is not loop:
            self._sweep, self._sweep_loop = loop.call_later(self.hold_s / 2, self._free_overdue), loop

    def holds(self, slot: _Slot) -> bool:
        return slot in self._taken

    def give_back(self, slot: _Slot) -> None:
        if self._taken.pop(slot, None) is not None:
            self.places.release()

    def _free_overdue(self) -> None:
        loop = asyncio.get_running_loop()
        since = loop.time() - self.hold_s
        try:
            for slot in [s for s, at in self._taken.items() if at <= since]:
                self.give_back(slot)
                slot.arm()
        finally:  # whatever happens, the sweeps go on: without them no request would ever time out
            self._sweep = loop.call_later(self.hold_s / 2, self._free_overdue) if self._taken else None


class _Slot:
    """One request's place: `async with in_flight.slot() as slot: ...`."""

    __slots__ = ("_expiry", "_limit", "_when")

    def __init__(self, limit: InFlight) -> None:
        self._limit = limit
        self._expiry: asyncio.Timeout | None = None
        self._when = 0.0

    async def __aenter__(self) -> _Slot:
        await self._limit.places.acquire()
        self._limit.take(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._limit.give_back(self)

    def expire(self, expiry: asyncio.Timeout, timeout_s: float) -> None:
        """Let the request's `expiry` (entered as `asyncio.timeout(None)`) fire `timeout_s` from now. It
        is armed when the place is given up, or at once if that has happened already or would come too
        late."""
        self._expiry = expiry
        loop = asyncio.get_running_loop()
        self._when = loop.time() + timeout_s
        if not self._limit.holds(self) or timeout_s <= 1.5 * self._limit.hold_s:
            self.arm()

    def disarm(self) -> None:
        """The request is over (its `expiry` exited): nothing to arm any more."""
        self._expiry = None

    def arm(self) -> None:
        if self._expiry is not None:
            self._expiry.reschedule(self._when)
            self._expiry = None


def _registers(pdu: ModbusPDU, data: bytes) -> None:
    """Decode a read response's registers as pymodbus does (byte count, then big-endian words; a byte
    count past the data is an error), in one struct call: pymodbus unpacks them one by one, a third
    of the polling's CPU at 125-register reads (measured), which left the driver short of the
    throughput of bare pymodbus at 100 devices."""
    if (count := data[0]) >= len(data):
        raise ModbusIOException(f"byte_count {count} > length of packet {len(data)}",
                                function_code=pdu.function_code)
    pdu.registers = list(struct.unpack_from(f">{count // 2}H", data, 1))


class _HoldingRegisters(ReadHoldingRegistersResponse):
    """FC3's response, registered with each client through pymodbus's `register` (its way to supply a
    response class): pymodbus's own but for `_registers`."""

    def decode(self, data: bytes) -> None:
        _registers(self, data)


class _InputRegisters(ReadInputRegistersResponse):
    """FC4's response, as `_HoldingRegisters`."""

    def decode(self, data: bytes) -> None:
        _registers(self, data)


class ModbusEndpoint:
    """One bus (see `BusSpec`): its connection, shared by every unit id on it."""

    def __init__(self, spec: BusSpec, *, backoff: Backoff | None = None,
                 in_flight: InFlight | None = None) -> None:
        self.spec = spec
        self._backoff = backoff or Backoff()
        self._in_flight = in_flight or InFlight()
        self._client: ModbusBaseClient | None = None
        self._lock = asyncio.Lock()
        self._silent_requests = 0
        self._quiet_until = 0.0  # monotonic time before which the bus must stay quiet (the gap)
        # Incremented at every successful connect. A driver that sees it change knows that the
        # connection was re-made, so the device may have rebooted and lost its volatile registers.
        self.generation = 0

    def __str__(self) -> str:
        return str(self.spec)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def failed_connects(self) -> int:
        """Consecutive failed attempts to connect (or open the serial port); 0 once connected."""
        return self._backoff.failures

    async def request(
        self,
        unit_id: int,
        timeout_s: float,
        what: Callable[[], str],
        call: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]],
    ) -> ModbusPDU:
        """Run one request (connecting first if needed); `what()` describes it for error messages (made
        only on failure: formatting it for every request was a measurable part of the polling)."""

        def where() -> str:
            return f"{self} unit {unit_id}: {what()}"

        async with self._lock, self._in_flight.slot() as slot:
            client = await self._connected_client(timeout_s, where)
            quiet_s = self._quiet_until - time.monotonic()
            if quiet_s > 0:
                await asyncio.sleep(quiet_s)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps each request in a task.
                # Armed by the in-flight sweep, only for a request not answered within the hold.
                async with asyncio.timeout(None) as expiry:
                    slot.expire(expiry, timeout_s)
                    response = await call(client)
            except TimeoutError:
                if not client.connected:
                    self._drop()
                    raise ModbusConnectionLost(f"{where()}: connection lost") from None
                self._silent_requests += 1
                if self._silent_requests >= SILENT_REQUESTS_BEFORE_RECONNECT:
                    self._drop()
                raise ModbusTimeout(f"{where()}: no answer within {timeout_s:g} s") from None
            except (ModbusException, OSError) as err:
                # Not connected, or an answer that does not match the request: the stream cannot be
                # trusted any more, so start again on a fresh connection.
                self._drop()
                raise ModbusConnectionLost(f"{where()}: {err}") from None
            finally:
                slot.disarm()
                # From the end of this exchange (answered or not): a late answer from a slow unit has
                # that long to arrive before the next request goes out on the line.
                self._quiet_until = time.monotonic() + self.spec.effective_gap_s
            self._silent_requests = 0
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            if code == _GATEWAY_TARGET_NO_RESPONSE:
                raise ModbusTimeout(f"{where()}: gateway reports no answer from the unit (exception 11)")
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise ModbusExceptionResponse(f"{where()}: exception {code} ({name})", code)
        return response

    def _new_client(self) -> ModbusBaseClient:
        spec, line = self.spec, self.spec.serial
        client: ModbusBaseClient
        if line is not None:
            client = AsyncModbusSerialClient(
                line.port, framer=FramerType.RTU, baudrate=line.baudrate, bytesize=line.bytesize,
                parity=line.parity, stopbits=line.stopbits, timeout=_PYMODBUS_TIMEOUT_S, retries=0,
                reconnect_delay=0,
            )
        else:
            framer = FramerType.RTU if spec.transport == "rtu_over_tcp" else FramerType.SOCKET
            client = AsyncModbusTcpClient(
                spec.host, port=spec.port, framer=framer, timeout=_PYMODBUS_TIMEOUT_S, retries=0,
                reconnect_delay=0,
            )
        client.register(_HoldingRegisters)
        client.register(_InputRegisters)
        return client

    async def _connected_client(self, timeout_s: float, where: Callable[[], str]) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        now = time.monotonic()
        wait = self._backoff.wait_s(now)
        if wait > 0:
            raise ModbusConnectionLost(f"{where()}: not connected; next attempt in {wait:.1f} s")
        client = self._new_client()
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: it can swallow a cancellation on 3.11
                ok = await client.connect()
        except (TimeoutError, OSError):  # OSError: a serial port that cannot be opened
            ok = False
        if not ok:
            client.close()
            delay = self._backoff.failed(time.monotonic())
            raise ModbusConnectionLost(f"{where()}: cannot connect; next attempt in {delay:.1f} s")
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

    async def read(self, address: int, count: int, table: Table = "holding") -> list[int]:
        """Registers [address, address + count) of `table` (FC3 holding, FC4 input), in requests of at
        most 125 registers."""
        self._check_open()
        out: list[int] = []
        kind = "input " if table == "input" else ""
        for start in range(address, address + count, MAX_READ_REGISTERS):
            n = min(MAX_READ_REGISTERS, address + count - start)
            response = await self.endpoint.request(
                self.unit_id,
                self.timeout_s,
                lambda start=start, n=n: f"read {n} {kind}registers at {start}",
                lambda c, start=start, n=n: (
                    c.read_input_registers if table == "input" else c.read_holding_registers
                )(start, count=n, device_id=self.unit_id),
            )
            registers = getattr(response, "registers", [])
            if len(registers) < n:
                got = len(registers)
                raise ModbusConnectionLost(f"{self}: read at {start}: {got} of {n} registers came back")
            if n == count and len(registers) == n:
                return registers  # one request: its answer, not a copy (polling makes thousands a second)
            out.extend(registers[:n])
        return out

    async def write(self, address: int, values: Sequence[int], *, single: bool = False) -> None:
        """Write holding registers with FC16 (the function code SunSpec requires for writes), or one
        register with FC6 (`single`: some vendor devices accept nothing else)."""
        if single and len(values) != 1:
            raise ValueError("FC6 writes exactly one register")
        if not 0 < len(values) <= MAX_WRITE_REGISTERS:
            raise ValueError(f"a write takes 1 to {MAX_WRITE_REGISTERS} registers, not {len(values)}")
        self._check_open()
        if single:
            await self.endpoint.request(
                self.unit_id, self.timeout_s, lambda: f"write register {address} (FC6)",
                lambda c: c.write_register(address, values[0], device_id=self.unit_id),
            )
            return
        await self.endpoint.request(
            self.unit_id,
            self.timeout_s,
            lambda: f"write {len(values)} registers at {address}",
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
    """Buses by key: devices on one bus (TCP endpoint or serial port) share one connection and one lock."""

    def __init__(self, backoff_factory: Callable[[], Backoff] = Backoff,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._backoff_factory = backoff_factory
        self._in_flight = InFlight(max_in_flight)  # shared by every bus of the pool
        self._endpoints: dict[tuple[str, ...], ModbusEndpoint] = {}
        self._users: dict[tuple[str, ...], int] = {}

    def unit(self, host: str, port: int, unit_id: int, timeout_s: float) -> ModbusUnit:
        """A unit behind a Modbus TCP endpoint."""
        return self.unit_on(BusSpec(host=host, port=port), unit_id, timeout_s)

    def unit_on(self, spec: BusSpec, unit_id: int, timeout_s: float) -> ModbusUnit:
        """A unit on the bus `spec` (ValueError if that bus is already in use with other settings)."""
        key = spec.key
        if key not in self._endpoints:
            self._endpoints[key] = ModbusEndpoint(spec, backoff=self._backoff_factory(),
                                                  in_flight=self._in_flight)
            self._users[key] = 0
        elif self._endpoints[key].spec != spec:
            raise ValueError(f"{spec}: already in use with other settings: {self._endpoints[key].spec!r}")
        self._users[key] += 1
        return ModbusUnit(self._endpoints[key], unit_id, timeout_s, self)

    async def release(self, endpoint: ModbusEndpoint) -> None:
        key = endpoint.spec.key
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
