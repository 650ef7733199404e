"""The `Device` interface the control loop uses, independent of the protocol behind it.

Use: `await device.connect()` once, then every control interval `await device.read()` (one task per
device, so a silent device never delays the others), and `await device.write(cmd)` whenever the
command changes (calling it every cycle with the same command is fine and costs no I/O).

None of the four raises for device trouble: `connect()` and `write()` return False, `read()` returns
None, and the cause is in `last_error` (a `DeviceOffline` or a `DeviceFault`). Whatever a driver meets,
nothing else leaves them: an exception no driver foresaw is logged with its traceback and becomes a
`DeviceFault`, so one bad value or driver bug fails that device, never the gateway.

Every value a driver passes on has been checked (`plausible`): finite, decodable (scale factors within
SunSpec's -10…10), physically possible for the device. A reading without a usable active power is a
`DeviceFault` naming the point, its raw value and why (the device then counts as not answering); other
quantities that are unusable are reported as None, logged when that starts and when it ends.
A `Reading` never holds a number that is not finite.

Comms supervision lives here, once for every protocol: a failed read (or an unanswered write) marks the
device offline; while offline, `read()` returns None at once until its backoff delay (0.5 s doubling to
30 s) has passed, then makes one recovery attempt (reconnect, re-discover, re-apply the last command),
and the first good read brings it back online.

A written command stays in force until the next `write()` or `close()`: `read()` keeps it alive by
rewriting it before the device's reversion timer can run out, and reads back what the device holds
(power and connect state alike), writing it again when the device has lost it. When the gateway stops
(process dead, or `close()`), nothing refreshes it any more and every device reverts on its own, to
what was written with the command: the lower of the device's safe limit (the site file's
`safe_limit_pct`) and the command's `revert_kw` (its share of the LDC limits in force, 0 under
disconnect / cease_to_energize). A map without a reversion value (SunSpec 123, AN2018 DNP3, most vendor
maps) drops the limit altogether when its timer runs out; such a device is written with no timeout
while that would exceed the reversion limit, and keeps the gateway's last command instead.

Sign convention of `Reading.p_kw` and `Command.p_kw`: positive = power into the grid side (PV
generation, battery discharge); for the meter, positive = export from the site to the grid.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal, Protocol, TypeVar

from gateway.south.backoff import Backoff
from gateway.south.plausible import MAX_W, Sample, Unusable, pick, power_bound_w

log = logging.getLogger(__name__)

Kind = Literal["pv", "battery", "meter"]
WritePurpose = Literal["setpoint", "refresh", "reapply", "connect", "heartbeat"]

STALE_AFTER_CYCLES = 3  # a reading older than this many control intervals is stale


@dataclass(frozen=True, slots=True)
class Reading:
    """One consistent read of a device. `None` means the device does not report that quantity."""

    p_kw: float  # active power; + = generation / discharge; meter: + = export to the grid
    q_kvar: float | None  # reactive power, same sign convention as p_kw
    v_pu: float | None  # voltage / the device's nominal voltage
    hz: float | None
    available_kw: float | None  # PV: what it could produce now; battery: discharge capability now
    max_charge_kw: float  # battery: charge capability now (≥ 0); 0 for PV and meter
    rated_kw: float | None  # the device's maximum active power setting (WMax); None for the meter
    soc_pct: float | None  # battery state of charge
    connected: bool | None  # connected to the grid (enter service permitted and closed)
    limit_pct: float | None  # PV: active power limit in force, % of rated_kw; None = no limit
    setpoint_kw: float | None  # the command in force, in Command.p_kw terms (PV: limit in kW)
    at: float  # time.monotonic() when the read completed


_FLOAT_FIELDS = tuple(f.name for f in fields(Reading) if "float" in str(f.type))


def _check_finite(reading: Reading) -> Reading:
    """`reading`, or ValueError (a driver bug) naming a field that is not a finite number."""
    for name in _FLOAT_FIELDS:
        value = getattr(reading, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"the driver made a reading with {name} = {value}")
    return reading


class Command(Protocol):
    """What the control loop wants from a device (any object with these attributes).

    p_kw: PV: the active power limit in kW (clamped to 0…rated); battery: the signed active power
    setpoint in kW, negative = charge. connect: False = cease to energize / disconnect. revert_kw: the
    most the device may produce (PV) or discharge (battery) once its reversion timer has run out, i.e.
    when the gateway has stopped (`gateway.core.model.DeviceCommand`); None: the LDC restricts nothing.
    """

    @property
    def p_kw(self) -> float: ...

    @property
    def connect(self) -> bool: ...

    @property
    def revert_kw(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Setpoint:
    """A `Command`, as the device keeps it."""

    p_kw: float
    connect: bool = True
    revert_kw: float | None = None

    def revert_cap_w(self, safe_w: float) -> float:
        """What the device may produce (or discharge) once its reversion timer runs out, in W: the lower of
        its own safe limit `safe_w` and `revert_kw`."""
        return safe_w if self.revert_kw is None else min(safe_w, self.revert_kw * 1000)

    def held_on_timeout(self, safe_limit_pct: float, rated_w: float) -> bool:
        """For a device that drops its limit when its reversion timer runs out (full output): whether that
        would exceed what it may do once the gateway has stopped. It is then written with no timeout, and
        keeps this command instead."""
        return self.revert_cap_w(safe_limit_pct / 100 * rated_w) < rated_w


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One point written to a device, for the audit log (passed to the `on_write` hook)."""

    device_id: str
    point: str  # "704.WMaxLimPct": model id and point name
    address: int  # absolute register address of the point
    raw: int | str  # the value as written, before encoding (scaled integer, enum value)
    result: str  # "ok", or the error (timeout, exception n, connection lost)
    purpose: WritePurpose
    timestamp: float  # time.time(), UTC epoch seconds


WriteHook = Callable[[WriteRecord], None]

W = TypeVar("W")  # one write of a driver's plan (a register write, a DNP3 operate)


def due_writes(plan: Sequence[W], applied: Sequence[W] | None, age_s: float, refresh_s: float, *,
               force: bool, purpose: WritePurpose) -> tuple[list[W], WritePurpose] | None:
    """What of a planned sequence of writes (a power command, a connect state) to write now: all of it
    when forced, not yet applied, or due for a refresh (`age_s` since its last write that restarted the
    device's reversion timer); else only the writes that changed (usually one: a request instead of the
    whole sequence, and at 1,000 devices the writes compete with the reads for the bus); None when
    nothing is due."""
    if force or applied is None:
        return list(plan), "reapply" if force else purpose
    if tuple(plan) != tuple(applied):
        return [w for w in plan if w not in applied], purpose
    if age_s >= refresh_s:
        return list(plan), "refresh"
    return None


class DeviceError(Exception):
    """A device operation failed; the message names the device and the cause."""

    def __init__(self, device_id: str, message: str) -> None:
        super().__init__(f"{device_id}: {message}")
        self.device_id = device_id


class DeviceOffline(DeviceError):
    """The device does not answer (timeout, connection lost, connection refused)."""


class DeviceFault(DeviceError):
    """The device answered but refused (protocol exception) or its map cannot be used."""


class Device(ABC):
    """A DER or meter the control loop reads and commands. Subclasses implement the protocol hooks."""

    def __init__(
        self,
        device_id: str,
        kind: Kind,
        *,
        stale_after_s: float,
        on_write: WriteHook | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._id = device_id
        self._kind = kind
        self._stale_after_s = stale_after_s
        self._on_write = on_write
        self._retry = backoff or Backoff()
        self._online = False
        self._last_error: DeviceError | None = None
        self._last_reading: Reading | None = None
        self._command: Setpoint | None = None
        self._unusable: set[str] = set()  # the quantities not reported now (logged when they stopped)

    # --- what the control loop sees -----------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def kind(self) -> Kind:
        return self._kind

    @property
    def online(self) -> bool:
        """True from a successful connect or read until the next failed read or unanswered write."""
        return self._online

    @property
    def stale(self) -> bool:
        """No good read within the last ~3 control intervals (or never)."""
        r = self._last_reading
        return r is None or time.monotonic() - r.at > self._stale_after_s

    @property
    def last_error(self) -> DeviceError | None:
        return self._last_error

    @property
    def last_reading(self) -> Reading | None:
        return self._last_reading

    @property
    def command(self) -> Setpoint | None:
        """The command last given to `write()` (kept while offline, re-applied after a reconnect)."""
        return self._command

    async def connect(self) -> bool:
        """Connect and discover; False if that failed (`read()` then retries with backoff)."""
        try:
            await self._connect()
        except DeviceError as err:
            self._failed(err, offline=True)
            return False
        except Exception as err:
            self._failed(self._unforeseen(err, "connect"), offline=True)
            return False
        self._mark_online()
        return True

    async def read(self) -> Reading | None:
        """A fresh reading, or None (offline, or the read failed: see `last_error`)."""
        try:
            if not self._online:
                if self._retry.wait_s(time.monotonic()) > 0:
                    return None
                await self._recover()
            reading = _check_finite(await self._read())
        except DeviceError as err:
            self._failed(err, offline=True)
            return None
        except Exception as err:
            self._failed(self._unforeseen(err, "read"), offline=True)
            return None
        self._last_reading = reading
        self._mark_online()
        try:
            await self._keep_alive()
        except DeviceError as err:  # the reading stands; a device that stopped answering is offline
            self._failed(err, offline=isinstance(err, DeviceOffline))
        except Exception as err:
            self._failed(self._unforeseen(err, "keep-alive write"), offline=False)
        return reading

    async def write(self, cmd: Command) -> bool:
        """Apply `cmd` now; False if it could not be (offline, or refused: see `last_error`).

        The command is kept either way, and applied when the device is back.
        """
        if self._kind == "meter":
            raise TypeError(f"{self._id}: a meter takes no commands")
        revert = cmd.revert_kw
        if revert is not None:  # NaN or below 0 (a bug upstream): the most restrictive reading of it
            revert = max(0.0, float(revert)) if math.isfinite(revert) else 0.0
        self._command = Setpoint(float(cmd.p_kw), bool(cmd.connect), revert)
        if not self._online:
            return False
        # the core asks for a command to be written again in full when the device does not follow it
        # (gateway/core/following.py); any other object standing for a command has no such wish
        resend = getattr(cmd, "resend", False) is True
        try:
            await (self._reapply() if resend else self._write())
        except DeviceError as err:
            self._failed(err, offline=isinstance(err, DeviceOffline))
            return False
        except Exception as err:
            self._failed(self._unforeseen(err, "write"), offline=False)
            return False
        return True

    async def close(self) -> None:
        """Close the connection, for good. Setpoints are left to revert on the device's own timers."""
        self._online = False
        await self._close()

    # --- for subclasses ------------------------------------------------------------------------------

    def _checked(self, samples: Mapping[str, Iterable[Sample]]) -> dict[str, float | None]:
        """The usable value of each quantity, from its samples in order of preference (`plausible`);
        the rating first, which bounds the powers. DeviceFault when the active power (`p_w`) is not."""
        rated, rated_problem = pick("rated_w", samples.get("rated_w", ()), MAX_W)
        bound_w = power_bound_w(rated)
        out: dict[str, float | None] = {"rated_w": rated}
        problems = {"rated_w": rated_problem}
        for field, field_samples in samples.items():
            if field != "rated_w":
                out[field], problems[field] = pick(field, field_samples, bound_w)
        if out.get("p_w") is None:  # the whole reading fails: last_error says why, once
            problem = problems.get("p_w")
            if problem is None:
                raise DeviceFault(self._id, "the device reports its active power as not implemented")
            raise DeviceFault(self._id, f"{problem}; no reading without active power")
        for field, problem in problems.items():
            self._note_unusable(field, problem)
        return out

    def _note_unusable(self, field: str, problem: Unusable | None) -> None:
        """Log when a quantity stops being usable, and when it is again (not on every read: garbage
        would have a new cause each time)."""
        if problem is None:
            if field in self._unusable:
                self._unusable.discard(field)
                log.info("%s: %s reported again", self._id, field)
        elif field not in self._unusable:
            self._unusable.add(field)
            log.warning("%s: %s not reported: %s", self._id, field, problem)

    def _unforeseen(self, err: Exception, what: str) -> DeviceFault:
        """A DeviceFault for an exception no driver foresaw (a bug: logged with its traceback)."""
        log.error("%s: %s failed on an unexpected %s", self._id, what, type(err).__name__, exc_info=err)
        return DeviceFault(self._id, f"{what} failed: {type(err).__name__}: {err}")

    def _record(self, record: WriteRecord) -> None:
        if self._on_write is not None:
            self._on_write(record)

    @abstractmethod
    async def _connect(self) -> None:
        """Open the connection and discover the device."""

    @abstractmethod
    async def _recover(self) -> None:
        """Bring an offline device back: reconnect, re-discover, re-apply `self._command`."""

    @abstractmethod
    async def _read(self) -> Reading: ...

    @abstractmethod
    async def _write(self) -> None:
        """Apply `self._command` now, writing only what changed."""

    @abstractmethod
    async def _reapply(self) -> None:
        """Write `self._command` again in full (purpose `reapply` in the audit log)."""

    @abstractmethod
    async def _keep_alive(self) -> None:
        """After each good read: refresh `self._command` on the device if that is due, and any
        protocol heartbeat."""

    @abstractmethod
    async def _close(self) -> None: ...

    # --- supervision ---------------------------------------------------------------------------------

    def _failed(self, err: DeviceError, *, offline: bool) -> None:
        self._last_error = err
        if offline:
            self._online = False
            self._retry.failed(time.monotonic())

    def _mark_online(self) -> None:
        self._online = True
        self._last_error = None
        self._retry.succeeded()
