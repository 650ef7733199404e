"""The one module that touches pymodbus's server API: a Modbus endpoint serving register banks.

An endpoint is one Modbus TCP listener, one TCP listener speaking RTU frames (what a TCP-to-RTU
converter with its RS-485 devices looks like from the network), or one serial port (an RS-485 line with
every simulated device of that line on it; tests make the line with a socat pseudo-terminal pair, see
`simulators/serial_pty.py`).

Registers are served through `pymodbus.simulator.SimDevice`/`SimData` (the 3.16 datastore; the old
one is deprecated and shifts addresses by one). The device's own register image stays the source of
truth: the SimDevice `action` hook, which pymodbus awaits before every datastore access, copies the
requested registers from the bank on reads and routes writes through the bank, which decides what is
applied (read-only registers keep their value). Addresses outside the bank are invalid in the SimData
layout, so pymodbus answers exception 2 (illegal data address) for them.

Fault modes, and how each is expressed (all but `reboot` in the action hook):
- exception: the hook returns the exception code; pymodbus sends it.
- slow: the hook sleeps before the first datastore access of a request.
- silent: the hook raises `NoSuchIdException`, which a server built with `ignore_missing_devices=True`
  answers with nothing at all ("the client will simply timeout"): the connection stays open and the
  request is dropped, with nothing left pending.
- reboot: cannot be expressed per request (it must drop connections and refuse new ones), so it is
  done at the transport level: the listener and every connection are closed, and a new server
  listens on the same port after the down time.

Unknown unit ids: pymodbus 3.16's SimCore raises KeyError for an id it does not have (logged with a
traceback, answered with code 4). A catch-all SimDevice(id=0) would have to span all 65,536 addresses
(≈1 MB per endpoint), so instead the server's datastore is wrapped: on Modbus TCP it answers them with
exception 0x0B (gateway target device failed to respond) itself, as a Modbus gateway does; with RTU
framing nobody answers, as on a real RS-485 line (the request is dropped like a silent unit's).
(Raising `NoSuchIdException` on TCP would also give 0x0B, but pymodbus logs that as an error with a
dump of recent frames, and `ignore_missing_devices` is taken by the silent mode.)

A bank can refuse a request itself by raising `BankError` (exception 2 for an address its device does
not have: vendor maps have holes), and can serve a separate input-register table (FC4) with
`read_input`; without it, FC3 and FC4 read the same registers, as SunSpec devices do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, cast

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from gateway.config import SerialConfig

FaultMode = Literal["none", "silent", "exception", "slow", "reboot"]
FAULT_MODES: tuple[FaultMode, ...] = ("none", "silent", "exception", "slow", "reboot")

# Holding/input register function codes; coil and discrete-input access to a SunSpec map is refused.
_REGISTER_FCS = frozenset({3, 4, 6, 16, 22, 23})
# Function codes whose first datastore access is a write (6 and 23 write, then read back).
_WRITE_FIRST_FCS = frozenset({6, 16, 23})


class BankError(Exception):
    """Raised by a bank to answer a request with a Modbus exception (2: no such address)."""

    def __init__(self, code: int = ExcCodes.ILLEGAL_ADDRESS) -> None:
        super().__init__(f"exception {code}")
        self.code = code


class RegisterBank(Protocol):
    """What an endpoint serves for one unit id: a contiguous block of holding registers."""

    base: int

    @property
    def end(self) -> int: ...

    def read(self, address: int, count: int) -> list[int]: ...

    def write(self, address: int, values: list[int]) -> list[int]:
        """Apply a write; return the registers as they now are (read-only ones unchanged)."""
        ...


@dataclass
class Fault:
    mode: FaultMode = "none"
    exception_code: int = ExcCodes.DEVICE_FAILURE
    delay_s: float = 2.0


class _Unit:
    def __init__(self, unit_id: int, bank: RegisterBank) -> None:
        self.unit_id = unit_id
        self.bank = bank
        self.fault = Fault()

    def sim_device(self) -> SimDevice:
        size = self.bank.end - self.bank.base
        data = SimData(address=self.bank.base, count=size, values=0, datatype=DataType.REGISTERS)
        return SimDevice(id=self.unit_id, simdata=[data], action=self._action)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code not in _REGISTER_FCS:
            return ExcCodes.ILLEGAL_FUNCTION
        # FC 6/22/23 reach the datastore twice; the fault applies once per request.
        first_access = (set_values is not None) == (function_code in _WRITE_FIRST_FCS)
        fault = self.fault
        if first_access and fault.mode == "exception":
            return ExcCodes(fault.exception_code)
        if first_access and fault.mode == "silent":
            raise NoSuchIdException("silent fault: drop the request")
        if first_access and fault.mode == "slow":
            await asyncio.sleep(fault.delay_s)
        offset = address - start_address
        try:
            if set_values is None:
                read_input = getattr(self.bank, "read_input", None)
                source = read_input if function_code == 4 and read_input is not None else self.bank.read
                current_registers[offset : offset + count] = source(address, count)
            else:
                # pymodbus stores `set_values` after the hook returns: make it what the bank applied.
                set_values[:] = self.bank.write(address, [int(v) for v in set_values])
        except BankError as err:
            return ExcCodes(err.code)
        return None


class _KnownIdsOnly:
    """The server's SimCore, except that an unknown unit id is answered with exception 0x0B."""

    def __init__(self, core: SimCore, ids: set[int], *, silent: bool = False) -> None:
        self._core = core
        self._ids = ids
        self._silent = silent  # RTU framing: an unknown unit id is nobody on the line

    def _unknown(self) -> ExcCodes:
        if self._silent:
            raise NoSuchIdException("no such unit on the line")  # dropped: ignore_missing_devices
        return ExcCodes.GATEWAY_NO_RESPONSE

    async def async_getValues(  # pymodbus's datastore interface
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if device_id not in self._ids:
            return self._unknown()
        return await self._core.async_getValues(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        if device_id not in self._ids:
            return self._unknown()
        return await self._core.async_setValues(device_id, func_code, address, values)

    def device_ids(self) -> list[int]:
        return sorted(self._ids)


class ModbusEndpoint:
    """One Modbus listener serving one register bank per unit id: TCP at (host, port), RTU frames over
    TCP (`rtu=True`), or RTU on the serial port `serial` (host and port are then unused)."""

    def __init__(
        self, host: str, port: int, *, rtu: bool = False, serial: SerialConfig | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.rtu = rtu or serial is not None
        self.serial = serial
        self._units: dict[int, _Unit] = {}
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._reboot: asyncio.Task[None] | None = None

    def __str__(self) -> str:
        if self.serial is not None:
            return self.serial.port
        return f"{'rtu-over-tcp ' if self.rtu else ''}{self.host}:{self.port}"

    def add_unit(self, unit_id: int, bank: RegisterBank) -> None:
        if unit_id in self._units:
            raise ValueError(f"unit id {unit_id} is already served on {self}")
        self._units[unit_id] = _Unit(unit_id, bank)

    @property
    def rebooting(self) -> bool:
        return self._reboot is not None and not self._reboot.done()

    async def start(self) -> None:
        """Listen; returns once connections are accepted. Raises OSError if the port cannot be bound."""
        if self._server is not None:
            return
        devices = [u.sim_device() for u in self._units.values()]
        server: ModbusTcpServer | ModbusSerialServer
        if self.serial is not None:
            line = self.serial
            server = ModbusSerialServer(
                devices, port=line.port, baudrate=line.baudrate, parity=line.parity, stopbits=line.stopbits,
                bytesize=line.bytesize, ignore_missing_devices=True,
            )
        else:
            framer = FramerType.RTU if self.rtu else FramerType.SOCKET
            server = ModbusTcpServer(devices, address=(self.host, self.port), framer=framer,
                                     ignore_missing_devices=True)
        assert isinstance(server.context, SimCore)
        server.context = _KnownIdsOnly(  # type: ignore[assignment]
            server.context, set(self._units), silent=self.rtu
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:  # pymodbus reports a failed bind/open as RuntimeError; say where
            raise OSError(f"cannot listen on {self} (in use?)") from err
        self._server = server

    async def stop(self) -> None:
        if self._reboot is not None:
            self._reboot.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reboot
            self._reboot = None
        await self._close()

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # closes the listener and every open connection

    def fault(self, unit_id: int) -> Fault:
        return self._units[unit_id].fault

    def fault_mode(self, unit_id: int) -> FaultMode:
        """What a unit does now, a reboot of the whole endpoint included."""
        return "reboot" if self.rebooting else self._units[unit_id].fault.mode

    def inject(
        self, unit_id: int, mode: str, *, code: int = 4, delay_s: float = 2.0, duration_s: float = 3.0,
        on_reboot: Callable[[], None] | None = None,
    ) -> None:
        """Make a unit misbehave (see `simulators.device.SunSpecDevice.set_fault` for the modes);
        `on_reboot` runs when the endpoint reboots (the device loses its volatile registers)."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; one of {', '.join(FAULT_MODES)}")
        if not 1 <= code <= 255:
            raise ValueError("exception code must be 1..255")
        if delay_s < 0 or duration_s < 0:
            raise ValueError("delay_s and duration_s must be ≥ 0")
        if mode == "reboot":
            self.set_fault(unit_id, Fault())
            if on_reboot is not None:
                on_reboot()
            self.reboot(duration_s)
            return
        self.set_fault(unit_id, Fault(cast(FaultMode, mode), code, delay_s))

    def set_fault(self, unit_id: int, fault: Fault) -> None:
        """Set the per-request fault of one unit (none, silent, exception, slow)."""
        if fault.mode == "reboot":
            raise ValueError("reboot is an endpoint action: use reboot()")
        self._units[unit_id].fault = fault

    def reboot(self, down_s: float) -> asyncio.Task[None]:
        """Drop every connection, refuse connections for `down_s`, then listen again."""
        if self.rebooting:
            assert self._reboot is not None
            return self._reboot
        self._reboot = asyncio.get_running_loop().create_task(self._run_reboot(down_s))
        return self._reboot

    async def _run_reboot(self, down_s: float) -> None:
        await self._close()
        await asyncio.sleep(down_s)
        # The port was ours a moment ago; retry briefly in case the OS has not released it yet.
        for attempt in range(20):
            try:
                await self.start()
                return
            except OSError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.1)
