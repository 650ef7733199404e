"""The gateway's only door to opendnp3 (the yadnp3 binding): an outstation for LDC SCADA and a master
for DNP3 devices, both driven from asyncio.

opendnp3 runs its own threads and calls back on them. Every callback here is short: it answers from
what it is given (a command check is a plain function of the command), or hands what it learned to the
event loop with `loop.call_soon_threadsafe`. An exception escaping a callback would be printed by
pybind11 and turned into NOT_SUPPORTED, so each callback catches and logs it.

Limits of the binding, worked around here (shared/reference/packages.md §3):
- No per-point configuration: `DatabaseConfig(n)` gives n points of every type at indices 0..n-1 with
  default variations (analog inputs go out as g30v1, int32: callers send scaled integers) and event
  class 1. The types the gateway does not serve are emptied, so an integrity poll carries binary and
  analog inputs and output status only (and no g50v4, which dnp3py masters cannot decode).
- The default event buffer holds no events at all: it is sized here, or no event is ever reported.
- Master tasks have no completion callback of their own. User tasks complete in the order they were
  started, one `OnTaskComplete(USER_TASK)` each, so a counter pairs a poll with its completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

try:
    import opendnp3 as o
except ImportError as err:  # only a site with [scada] or a dnp3 device gets here
    raise ImportError("DNP3 needs the opendnp3 binding: `pip install yadnp3` (wheels for x86-64 Linux only); "
                      "a site without [scada] and without dnp3 devices runs without it") from err

log = logging.getLogger(__name__)

# Types the gateway never serves: emptied so that an integrity poll does not carry them.
_UNSERVED = ("double_binary", "counter", "frozen_counter", "octet_string", "time_and_interval")
EVENT_BUFFER = 1000  # events of each type kept for a master that has not polled (or confirmed) yet
REQUEST_TICK_S = 1.0  # `on_request` is told at most this often: it feeds a 90 s comms supervision
RETRY_MIN_S = 0.5  # the master's TCP reconnect delay doubles from here to `retry_max_s`
_WARN, _ERR, _HEADER_RX = o.flags.WARN.value, o.flags.ERR.value, o.flags.APP_HEADER_RX.value


@dataclass(frozen=True)
class BinaryCommand:
    """A control relay output block as the gateway reads it: `on` for latch/pulse on or close, off for
    latch/pulse off or trip, None for a code that says neither (NUL)."""

    index: int
    on: bool | None
    code: str  # as received, for the log: "LATCH_ON/NUL", "PULSE_ON/CLOSE"


@dataclass(frozen=True)
class AnalogCommand:
    index: int
    value: float


Command = BinaryCommand | AnalogCommand


class Dnp3Error(Exception):
    """A master task that did not succeed: no answer, link down, or a response that could not be used."""


def _post(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., None], *args: Any) -> None:
    """Run `fn(*args)` on the event loop, from an opendnp3 thread."""
    if loop is None:
        return
    with contextlib.suppress(RuntimeError):  # the loop has closed: the process is shutting down
        loop.call_soon_threadsafe(fn, *args)


def _ms(seconds: float) -> Any:
    return o.TimeDuration.Milliseconds(max(1, round(seconds * 1000)))


class _LogRouter(o.ILogHandler):
    """opendnp3's log into Python logging; for an outstation, a tick per request header received."""

    def __init__(self, stack_id: str, on_header: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._stack_id = stack_id
        self._on_header = on_header

    def log(self, module: Any, id: str, level: Any, location: str, message: str) -> None:
        try:
            value = level.value
            if value & _HEADER_RX:
                if self._on_header is not None and id == self._stack_id:
                    self._on_header()
            elif value & (_ERR | _WARN):
                log.log(logging.WARNING if value & _ERR else logging.INFO, "opendnp3 %s: %s", id, message)
        except Exception:
            log.exception("opendnp3 log handler failed")


# ---- outstation --------------------------------------------------------------------------------------------


def _command(command: Any, index: int) -> Command:
    if not isinstance(command, o.ControlRelayOutputBlock):
        return AnalogCommand(index, float(command.value))
    tcc, op = command.tcc, command.opType
    on: bool | None = None
    if tcc == o.TripCloseCode.CLOSE or (tcc == o.TripCloseCode.NUL and op in (o.OperationType.LATCH_ON,
                                                                                o.OperationType.PULSE_ON)):
        on = True
    elif tcc == o.TripCloseCode.TRIP or (tcc == o.TripCloseCode.NUL and op in (o.OperationType.LATCH_OFF,
                                                                                 o.OperationType.PULSE_OFF)):
        on = False
    return BinaryCommand(index, on, f"{op.name}/{tcc.name}")


class _CommandHandler(o.ICommandHandler):
    """SELECT only checks; OPERATE (after a select, or direct) checks, and on success hands the command
    to the loop. opendnp3 itself keeps the select state: an OPERATE without its SELECT, or after the
    select timeout, is answered NO_SELECT and never reaches here."""

    def __init__(self, loop: asyncio.AbstractEventLoop, check: Callable[[Command], str],
                 on_operate: Callable[[Command], None]) -> None:
        super().__init__()
        self._loop, self._check, self._on_operate = loop, check, on_operate

    def Begin(self) -> None:
        pass

    def End(self) -> None:
        pass

    def Select(self, command: Any, index: int) -> Any:
        return self._handle(command, index, operate=False)

    def Operate(self, command: Any, index: int, handler: Any, op_type: Any) -> Any:
        return self._handle(command, index, operate=True)

    def _handle(self, command: Any, index: int, *, operate: bool) -> Any:
        try:
            cmd = _command(command, index)
            status = self._check(cmd)
            if operate and status == "SUCCESS":
                _post(self._loop, self._on_operate, cmd)
            return getattr(o.CommandStatus, status)
        except Exception:
            log.exception("DNP3 command on point %d failed", index)
            return o.CommandStatus.HARDWARE_ERROR


class OutstationStack:
    """A DNP3 outstation on TCP with `point_count` binary inputs, analog inputs and output status points
    (indices 0..point_count-1), unsolicited reporting allowed, every point in event class 1.

    `check(command)` runs on an opendnp3 thread for every SELECT and OPERATE and returns a command
    status name ("SUCCESS", "NOT_SUPPORTED", "OUT_OF_RANGE", ...): it must only look at the command.
    `on_operate(command)` runs on the loop for every operated command that checked SUCCESS;
    `on_request()` runs on the loop, at most once a second, while requests from the master arrive.
    """

    def __init__(self, *, name: str, host: str, port: int, address: int, master_address: int,
                 point_count: int, check: Callable[[Command], str], on_operate: Callable[[Command], None],
                 on_request: Callable[[], None]) -> None:
        self.name = name
        self._endpoint = (host, port)
        self._addresses = (address, master_address)
        self._point_count = point_count
        self._check, self._on_operate, self._on_request = check, on_operate, on_request
        self._manager: Any = None
        self._outstation: Any = None
        self._handlers: tuple[Any, ...] = ()
        self._last_tick = -REQUEST_TICK_S

    def start(self) -> None:
        """Listen; call from the event loop."""
        loop = asyncio.get_running_loop()

        def tick() -> None:  # opendnp3 thread: only a clock read per request, one post a second
            now = time.monotonic()
            if now - self._last_tick >= REQUEST_TICK_S:
                self._last_tick = now
                _post(loop, self._on_request)

        self._manager = o.DNP3Manager(1, _LogRouter(self.name, tick))
        levels = o.LogLevels(_HEADER_RX | _WARN | _ERR)
        channel = self._manager.AddTCPServer(f"{self.name}-tcp", levels, o.ServerAcceptMode.CloseExisting,
                                             o.IPEndpoint(*self._endpoint), None)
        db = o.DatabaseConfig(self._point_count)
        for kind in _UNSERVED:
            setattr(db, kind, {})
        cfg = o.OutstationStackConfig(db)
        cfg.link.LocalAddr, cfg.link.RemoteAddr = self._addresses
        cfg.outstation.params.allowUnsolicited = True
        cfg.outstation.eventBufferConfig = o.EventBufferConfig.AllTypes(EVENT_BUFFER)
        # opendnp3 keeps only a reference to the Python handlers: they live as long as this object.
        self._handlers = (_CommandHandler(loop, self._check, self._on_operate), o.IOutstationApplication())
        self._outstation = channel.AddOutstation(self.name, *self._handlers, cfg)
        self._outstation.Enable()

    def update(self, *, binary_inputs: Mapping[int, bool], analog_inputs: Mapping[int, float],
               binary_outputs: Mapping[int, bool], analog_outputs: Mapping[int, float]) -> None:
        """Set point values in one transaction; a changed value becomes an event (and an unsolicited
        report when the master has enabled them)."""
        b = o.UpdateBuilder()
        for i, v in binary_inputs.items():
            b.Update(o.Binary(v), i)
        for i, x in analog_inputs.items():
            b.Update(o.Analog(float(x)), i)
        for i, v in binary_outputs.items():
            b.Update(o.BinaryOutputStatus(v), i)
        for i, x in analog_outputs.items():
            b.Update(o.AnalogOutputStatus(float(x)), i)
        self._outstation.Apply(b.Build())

    def stop(self) -> None:
        if self._manager is not None:
            self._manager.Shutdown()
            self._manager = self._outstation = None


# ---- master ------------------------------------------------------------------------------------------------


class _Soe(o.ISOEHandler):
    def __init__(self, stack: MasterStack) -> None:
        super().__init__()
        self._stack = stack

    def BeginFragment(self, info: Any) -> None:
        pass

    def EndFragment(self, info: Any) -> None:
        pass

    def Process(self, info: Any, values: Any) -> None:
        try:
            if not values:
                return
            first = values[0].value
            if isinstance(first, o.Binary):
                _post(self._stack.loop, self._stack.binaries.update, {v.index: v.value.value for v in values})
            elif isinstance(first, o.Analog):  # with its flags: a value flagged over range is no value
                _post(self._stack.loop, self._stack._analogs_in,
                      {v.index: (v.value.value, v.value.flags.value) for v in values})
            # else output status: the AN2018 profile reads commands back on inputs
        except Exception:
            log.exception("DNP3 %s: measurement handler failed", self._stack.name)


class _NoValues(o.ISOEHandler):
    """Values decoded by opendnp3 and never handed to Python: for a master that only measures."""

    def BeginFragment(self, info: Any) -> None:
        pass

    def EndFragment(self, info: Any) -> None:
        pass


class _MasterApp(o.IMasterApplication):
    def __init__(self, stack: MasterStack) -> None:
        super().__init__()
        self._stack = stack

    def OnReceiveIIN(self, iin: Any) -> None:
        try:
            _post(self._stack.loop, self._stack._restart_bit, bool(iin.IsSet(o.IINBit.DEVICE_RESTART)))
        except Exception:
            log.exception("DNP3 %s: IIN handler failed", self._stack.name)

    def OnTaskStart(self, type: Any, id: Any) -> None:
        pass

    def OnTaskComplete(self, info: Any) -> None:
        try:
            if info.type == o.MasterTaskType.USER_TASK:
                _post(self._stack.loop, self._stack._task_done, info.result.name)
        except Exception:
            log.exception("DNP3 %s: task handler failed", self._stack.name)

    def OnOpen(self) -> None:
        _post(self._stack.loop, self._stack._link, True)

    def OnClose(self) -> None:
        _post(self._stack.loop, self._stack._link, False)

    def AssignClassDuringStartup(self) -> bool:
        return False


class MasterStack:
    """A DNP3 master on a TCP client channel that reconnects by itself (RETRY_MIN_S doubling to
    `retry_max_s`). `binaries` and `analogs` hold the last value of every input point seen (and
    `analog_flags` the quality flags of each analog, IEEE 1815 Table 4-8), updated on the loop
    (unless `keep_values` is False: a master that only measures an outstation); `generation` grows
    whenever the link opens or the outstation reports a restart, so a user can tell that volatile
    settings on the outstation may be gone."""

    def __init__(self, *, name: str, host: str, port: int, address: int, outstation_address: int,
                 response_timeout_s: float, retry_max_s: float = 30.0, keep_values: bool = True) -> None:
        self.name = name
        self._endpoint = (host, port)
        self._addresses = (address, outstation_address)
        self._timeout_s = response_timeout_s
        self._retry_max_s = retry_max_s
        self._keep_values = keep_values
        self.binaries: dict[int, bool] = {}
        self.analogs: dict[int, float] = {}
        self.analog_flags: dict[int, int] = {}
        self.generation = 0
        self.open = False
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._manager: Any = None
        self._master: Any = None
        self._handlers: tuple[Any, ...] = ()
        self._lock = asyncio.Lock()  # one user task at a time: completions are paired by count
        self._issued = 0
        self._completed = 0
        self._waiters: dict[int, asyncio.Future[str]] = {}
        self._restarting = False
        self._fresh = False  # no answer yet on the link that just opened

    def start(self) -> None:
        """Create the channel and enable the master; call from the event loop. Idempotent."""
        if self._manager is not None:
            return
        self.loop = asyncio.get_running_loop()
        self._manager = o.DNP3Manager(1, _LogRouter(self.name))
        retry = o.ChannelRetry(_ms(RETRY_MIN_S), _ms(self._retry_max_s))
        channel = self._manager.AddTCPClient(f"{self.name}-tcp", o.LogLevels(_WARN | _ERR), retry,
                                             [o.IPEndpoint(*self._endpoint)], "0.0.0.0", None)
        cfg = o.MasterStackConfig()
        cfg.link.LocalAddr, cfg.link.RemoteAddr = self._addresses
        cfg.master.responseTimeout = _ms(self._timeout_s)
        cfg.master.taskStartTimeout = _ms(self._timeout_s)  # a task on a closed link fails, it does not wait
        cfg.master.taskRetryPeriod = _ms(1.0)  # startup tasks again soon after an outstation is back
        self._handlers = (_Soe(self) if self._keep_values else _NoValues(), _MasterApp(self))
        self._master = channel.AddMaster(self.name, *self._handlers, cfg)
        self._master.Enable()

    def stop(self) -> None:
        if self._manager is not None:
            self._manager.Shutdown()
            self._manager = self._master = None
        self.open = False
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(Dnp3Error("master stopped"))
        self._waiters.clear()

    async def poll(self, *, integrity: bool) -> None:
        """An integrity poll (class 0, 1, 2, 3) or an event poll (class 1, 2, 3); raises Dnp3Error."""
        what = "integrity poll" if integrity else "event poll"
        fields = o.ClassField.AllClasses() if integrity else o.ClassField.AllEventClasses()
        async with self._lock:
            self._issued += 1
            n, fut = self._issued, asyncio.get_running_loop().create_future()
            self._waiters[n] = fut
            self._master.ScanClasses(fields, self._handlers[0])
            result = await self._wait(n, fut, what)
        if result != "SUCCESS":
            raise Dnp3Error(f"{what}: {result}")

    async def operate(self, command: Command, *, select_first: bool) -> str:
        """Select-and-operate or direct-operate one point; the point's command status name. Raises
        Dnp3Error when the task itself failed (no answer, bad response)."""
        if isinstance(command, BinaryCommand):
            obj: Any = o.ControlRelayOutputBlock(o.OperationType.LATCH_ON if command.on
                                                 else o.OperationType.LATCH_OFF)
        else:
            obj = o.AnalogOutputInt32(round(command.value))
        what = f"{'select/operate' if select_first else 'direct operate'} {command}"
        loop = asyncio.get_running_loop()
        result: asyncio.Future[tuple[str, str]] = loop.create_future()

        def done(r: Any) -> None:  # opendnp3 thread
            try:
                statuses = [p.status.name for p in r.to_list()]
                _post(loop, _settle, result, (r.summary.name, statuses[0] if statuses else "UNDEFINED"))
            except Exception:
                log.exception("DNP3 %s: command callback failed", self.name)

        async with self._lock:
            self._issued += 1  # its OnTaskComplete is counted too (it comes just before this callback)
            (self._master.SelectAndOperate if select_first else self._master.DirectOperate)(
                obj, command.index, done)
            try:
                async with asyncio.timeout(self._deadline_s()):  # not wait_for: see _wait
                    summary, status = await result
            except TimeoutError:
                raise Dnp3Error(f"{what}: no answer") from None
        if summary != "SUCCESS":
            raise Dnp3Error(f"{what}: {summary}")
        return status

    # ---- loop side of the callbacks ------------------------------------------------------------------------

    def _deadline_s(self) -> float:
        # opendnp3 answers every task within its own timeouts (start, then response); this only guards
        # against a completion that never comes
        return 2 * self._timeout_s + 1.0

    async def _wait(self, n: int, fut: asyncio.Future[str], what: str) -> str:
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as
            # the future completes (cpython gh-86296), and the gateway's stop would never end
            async with asyncio.timeout(self._deadline_s()):
                return await fut
        except TimeoutError:
            raise Dnp3Error(f"{what}: no answer") from None
        finally:
            self._waiters.pop(n, None)

    def _task_done(self, result: str) -> None:
        self._completed += 1
        fut = self._waiters.pop(self._completed, None)
        if fut is not None:
            _settle(fut, result)

    def _analogs_in(self, values: Mapping[int, tuple[float, int]]) -> None:
        for index, (value, flags) in values.items():
            self.analogs[index], self.analog_flags[index] = value, flags

    def _link(self, is_open: bool) -> None:
        if is_open and not self.open:
            self.generation += 1
            self._fresh = True
        self.open = is_open

    def _restart_bit(self, set_: bool) -> None:
        # The first answers on a new link report the restart that dropped it: already counted.
        if set_ and not self._restarting and not self._fresh:
            self.generation += 1
        self._restarting, self._fresh = set_, False


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)
