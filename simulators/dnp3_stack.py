"""The simulators' only door to dnp3py (pure-Python DNP3): an outstation server for simulated devices and
a master client for the simulated LDC SCADA (and tests).

The gateway speaks opendnp3; everything here speaks dnp3py, so each exchange between them is an
interoperability test of two independent stacks. Both run on the asyncio loop: no threads.

dnp3py gaps handled here (shared/reference/packages.md §3): its master parses the echo of a command but
does not deliver the per-point status, so `MasterClient` reads it from the echo; its master sends analog
commands as g41v1 (int32), so values are integers; its outstation TCP runner sends no unsolicited
responses, so a device simulated with it is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dnp3.core.enums import CommandStatus, ControlCode
from dnp3.core.flags import AnalogQuality
from dnp3.database import Database, DatabaseConfig
from dnp3.database.point import (
    AnalogInputConfig,
    AnalogOutputConfig,
    BinaryInputConfig,
    BinaryOutputConfig,
    EventClass,
)
from dnp3.master import Master, MasterConfig, MasterTcpRunner
from dnp3.master.master import _decode_object_layout, _iter_object_slots  # the echo decoder dnp3py has
from dnp3.outstation import CommandResult, DefaultCommandHandler, Outstation, OutstationConfig
from dnp3.outstation.tcp_runner import OutstationTcpRunner

# IEEE 1815.2 5.6.2: binary outputs are latched; the state each control code sets (others: not carried out).
_LATCH = {ControlCode.LATCH_ON: True, ControlCode.PULSE_ON: True, ControlCode.CLOSE_PULSE_ON: True,
          ControlCode.LATCH_OFF: False, ControlCode.PULSE_OFF: False, ControlCode.TRIP_PULSE_ON: False}


# ---- outstation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointSpec:
    """The points an outstation serves: inputs with their event class (0: no events), outputs with the
    range an analog command must be in."""

    binary_inputs: Mapping[int, int]
    analog_inputs: Mapping[int, int]
    binary_outputs: Sequence[int]
    analog_outputs: Mapping[int, tuple[float, float]]


class _Handler(DefaultCommandHandler):
    def __init__(self, server: OutstationServer) -> None:
        super().__init__()
        self._server = server

    def _binary(self, index: int, code: ControlCode, count: int, operate: bool) -> CommandResult:
        if index not in self._server.points.binary_outputs or code not in _LATCH or count > 1:
            return CommandResult.not_supported(f"binary output {index} code {code!r}")
        if operate and count == 1:
            self._server.on_binary(index, _LATCH[code])
        return CommandResult.success()

    def _analog(self, index: int, value: float, operate: bool) -> CommandResult:
        span = self._server.points.analog_outputs.get(index)
        if span is None:
            return CommandResult.not_supported(f"analog output {index}")
        if not span[0] <= value <= span[1]:
            return CommandResult.out_of_range(f"{value} outside {span}")
        if operate:
            self._server.on_analog(index, value)
        return CommandResult.success()

    def select_binary_output(self, index: int, code: ControlCode, count: int, on_time: int,
                             off_time: int) -> CommandResult:
        return self._binary(index, code, count, operate=False)

    def operate_binary_output(self, index: int, code: ControlCode, count: int, on_time: int, off_time: int,
                              select_sequence: int) -> CommandResult:
        return self._binary(index, code, count, operate=True)

    def direct_operate_binary_output(self, index: int, code: ControlCode, count: int, on_time: int,
                                     off_time: int) -> CommandResult:
        return self._binary(index, code, count, operate=True)

    def select_analog_output(self, index: int, value: float) -> CommandResult:
        return self._analog(index, value, operate=False)

    def operate_analog_output(self, index: int, value: float, select_sequence: int) -> CommandResult:
        return self._analog(index, value, operate=True)

    def direct_operate_analog_output(self, index: int, value: float) -> CommandResult:
        return self._analog(index, value, operate=True)


class _Outstation(Outstation):
    """An outstation that can be made silent: requests are read and never answered."""

    silent: bool = False

    def process_request(self, data: bytes, *, peer: Any = None) -> list[Any]:
        return [] if self.silent else super().process_request(data, peer=peer)


class OutstationServer:
    """A dnp3py outstation on TCP. `on_binary(index, on)` and `on_analog(index, value)` are called (on the
    loop) for every operated command that passed the checks; the owner applies it and updates the points.
    `restart()` drops the connection and comes back as a new outstation (restart IIN set); `silent`
    makes it stop answering while the connection stays up."""

    def __init__(self, *, host: str, port: int, address: int, master_address: int, points: PointSpec,
                 on_binary: Callable[[int, bool], None], on_analog: Callable[[int, float], None]) -> None:
        self.host, self.port = host, port
        self.points = points
        self.on_binary, self.on_analog = on_binary, on_analog
        self._config = OutstationConfig(address=address, master_address=master_address)
        self.database = self._database(points)
        self._outstation = self._new_outstation()
        self._runner: OutstationTcpRunner | None = None
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _database(points: PointSpec) -> Database:
        total = max(len(points.binary_inputs), len(points.analog_inputs), len(points.binary_outputs),
                    len(points.analog_outputs))
        db = Database(config=DatabaseConfig(max_binary_inputs=total, max_binary_outputs=total,
                                            max_analog_inputs=total, max_analog_outputs=total))
        for i, cls in points.binary_inputs.items():
            db.add_binary_input(i, BinaryInputConfig(event_class=EventClass(cls)))
        for i, cls in points.analog_inputs.items():
            db.add_analog_input(i, AnalogInputConfig(event_class=EventClass(cls)))
        for i in points.binary_outputs:
            db.add_binary_output(i, BinaryOutputConfig(event_class=EventClass.NONE))
        for i in points.analog_outputs:
            db.add_analog_output(i, AnalogOutputConfig())
        return db

    def _new_outstation(self) -> _Outstation:
        return _Outstation(database=self.database, config=self._config, handler=_Handler(self))

    @property
    def silent(self) -> bool:
        return self._outstation.silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self._outstation.silent = value

    async def start(self) -> None:
        """Serve; returns once the port listens."""
        self._runner = OutstationTcpRunner(outstation=self._outstation, host=self.host, port=self.port)
        self._task = asyncio.get_running_loop().create_task(self._runner.run(), name=f"dnp3-{self.port}")
        while not self._runner.is_running:
            if self._task.done():
                await self._task  # it failed to listen: raise why
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._runner = self._task = None

    async def restart(self, down_s: float) -> None:
        """Go away for `down_s` (connections dropped, port closed), then serve again as a freshly
        started outstation: its restart IIN is set and its values are those the owner keeps."""
        await self.stop()
        await asyncio.sleep(down_s)
        self._outstation = self._new_outstation()
        await self.start()

    def set_binary(self, index: int, value: bool) -> None:
        if index in self.points.binary_inputs:
            self.database.update_binary_input(index, value)
        else:
            self.database.update_binary_output(index, value)

    def set_analog(self, index: int, value: float, *, over_range: bool = False) -> None:
        """An analog's value; `over_range` flags an input OVER_RANGE (IEEE 1815: the value is then the
        largest the variation holds), as a device does for a measurement it cannot make."""
        if index in self.points.analog_inputs:
            quality = AnalogQuality.ONLINE | AnalogQuality.OVER_RANGE if over_range else None
            self.database.update_analog_input(index, value, quality)
        else:
            self.database.update_analog_output(index, value)


# ---- master ----------------------------------------------------------------------------------------------

_ECHO_WIDTH = {(12, 1): 11, (41, 1): 5, (41, 2): 3, (41, 3): 5, (41, 4): 9}  # octets per object, status last


class _Master(Master):
    """dnp3py's master, also keeping the per-point status of command echoes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.statuses: list[str] = []

    def _parse_response_objects(self, objects: Sequence[Any], info: Any) -> None:
        super()._parse_response_objects(objects, info)
        for block in objects:
            width = _ECHO_WIDTH.get((block.header.group, block.header.variation))
            layout = None if width is None else _decode_object_layout(block.header.qualifier, block.data)
            if width is None or layout is None:
                continue
            for _, offset in _iter_object_slots(layout, block.data, width):
                self.statuses.append(CommandStatus(block.data[offset + width - 1]).name)


class _Values:
    """The SOE handler: the last value of every point seen."""

    def __init__(self) -> None:
        self.binary_inputs: dict[int, bool] = {}
        self.binary_outputs: dict[int, bool] = {}
        self.analog_inputs: dict[int, float] = {}
        self.analog_outputs: dict[int, float] = {}

    def on_binary_input(self, values: list[Any], info: Any) -> None:
        self.binary_inputs.update((v.index, v.value) for v in values)

    def on_binary_output(self, values: list[Any], info: Any) -> None:
        self.binary_outputs.update((v.index, v.value) for v in values)

    def on_analog_input(self, values: list[Any], info: Any) -> None:
        self.analog_inputs.update((v.index, v.value) for v in values)

    def on_analog_output(self, values: list[Any], info: Any) -> None:
        self.analog_outputs.update((v.index, v.value) for v in values)

    def on_counter(self, values: list[Any], info: Any) -> None:
        pass

    def on_frozen_counter(self, values: list[Any], info: Any) -> None:
        pass


@dataclass(frozen=True)
class Control:
    """One point of a command: a binary output set on (latch on) or off (latch off), or an analog value."""

    index: int
    on: bool | None = None
    value: int | None = None


class MasterClient:
    """A dnp3py master on TCP: `async with MasterClient(host, port) as m: await m.integrity_poll()`;
    `m.values.analog_inputs[537]`; `await m.direct_operate([Control(17, on=True)])` → ["SUCCESS"]."""

    def __init__(self, host: str, port: int, *, address: int = 1, outstation_address: int = 10,
                 response_timeout_s: float = 5.0) -> None:
        self.values = _Values()
        self._master = _Master(handler=self.values, config=MasterConfig(
            address=address, outstation_address=outstation_address, response_timeout=response_timeout_s))
        self._runner = MasterTcpRunner(master=self._master, host=host, port=port,
                                       response_timeout=response_timeout_s)

    async def __aenter__(self) -> MasterClient:
        await self._runner.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.close()

    async def integrity_poll(self) -> None:
        await self._runner.integrity_poll()

    async def event_poll(self) -> None:
        await self._runner.class_poll()

    async def enable_unsolicited(self) -> None:
        await self._runner.enable_unsolicited()

    async def listen_unsolicited(self, timeout_s: float) -> bool:
        """Wait for one unsolicited response (its values land in `values`); False if none came."""
        return await self._runner.listen_unsolicited(timeout=timeout_s) is not None

    async def select(self, controls: Sequence[Control]) -> list[str]:
        return await self._command(controls, "select")

    async def operate(self, controls: Sequence[Control]) -> list[str]:
        return await self._command(controls, "operate")

    async def direct_operate(self, controls: Sequence[Control]) -> list[str]:
        return await self._command(controls, "direct_operate")

    async def select_and_operate(self, controls: Sequence[Control]) -> list[str]:
        """SELECT then OPERATE; the statuses of the operate (or of the select, if it failed)."""
        selected = await self.select(controls)
        return selected if any(s != "SUCCESS" for s in selected) else await self.operate(controls)

    async def _command(self, controls: Sequence[Control], kind: str) -> list[str]:
        b = self._master.command_builder()
        for c in controls:
            if c.value is not None:
                b.add_analog(c.index, c.value)
            elif c.on:
                b.latch_on(c.index)
            else:
                b.latch_off(c.index)
        build = {"select": (b.build_select, self._master.build_select),
                 "operate": (b.build_operate, self._master.build_operate),
                 "direct_operate": (b.build_direct_operate, self._master.build_direct_operate)}[kind]
        self._master.statuses = []
        await self._runner.request(build[1](build[0]()))
        return list(self._master.statuses)
