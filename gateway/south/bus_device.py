"""What every driver of a device on a Modbus bus shares, whatever describes its registers (SunSpec models
found by discovery, or a vendor profile): the read cycle, the command policy and the write journal.

Subclasses say *where* things are (`_discover`, `_read_image`, `_reading`, `_power_plan`,
`_connect_plan`); this class decides *when* to write:

- Reads: one image of every register the driver uses per cycle. If the bus's connection was re-made
  since discovery (the device may have rebooted, with another map and none of our setpoints), the
  device is discovered again and the last command re-applied; likewise when the read-back shows the
  device no longer holds a written value, of the power command or of the connect state (it reverted,
  or another master wrote).
- Writes: only what changed, in order (settings, value, reversion value and timer, then enable; cease
  to energize before anything else, energize only once the new limit is in place); a change of the
  command's `revert_kw` alone writes the reversion value alone. An unchanged power command and an
  unchanged connect state are each rewritten every `REFRESH_FRACTION` × the reversion timeout, counted
  from their last write that restarts the device's timer (a reversion value does not), which keeps the
  device's reversion timer from running out while the gateway lives. Every point written is journalled
  as a `WriteRecord`, with its result.
- Modbus errors become device errors once, here: no answer → `DeviceOffline`, an exception or an
  unusable map → `DeviceFault`.
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

from gateway.config import DeviceConfig
from gateway.south.backoff import Backoff
from gateway.south.device import (
    Device,
    DeviceError,
    DeviceFault,
    DeviceOffline,
    Reading,
    Setpoint,
    WriteHook,
    WritePurpose,
    WriteRecord,
    due_writes,
)
from gateway.south.modbus_client import (
    MAX_READ_REGISTERS,
    MAX_WRITE_REGISTERS,
    BusSpec,
    ModbusError,
    ModbusExceptionResponse,
    ModbusPool,
    ModbusTimeout,
    ModbusUnit,
    SerialLine,
    Table,
)
from gateway.south.profile import PROFILES_DIR

# Unchanged commands are rewritten at this fraction of the reversion timeout: under half, so that one
# missed cycle (a slow read, a retried request) still leaves the device holding the setpoint.
REFRESH_FRACTION = 0.4


def bus_spec(cfg: DeviceConfig) -> BusSpec:
    """The bus of a site-file device (devices whose specs share a key share one connection)."""
    line = None
    if cfg.serial is not None:
        ser = cfg.serial
        line = SerialLine(ser.port, ser.baudrate, ser.parity, ser.stopbits, ser.bytesize)
    return BusSpec(transport=cfg.transport, host=cfg.host, port=cfg.port or 0, serial=line,
                   gap_s=cfg.inter_request_gap_s)


@dataclass(frozen=True)
class PointWrite:
    """One point to write: its registers, already encoded, and what the journal records of it."""

    label: str  # "704.WMaxLimPct", or "<profile>.<register>" for a vendor profile
    address: int
    raw: int | str  # the value as written, before encoding (scaled integer, enum value)
    regs: tuple[int, ...]
    held: bool = False  # the device must go on holding it: a read-back that differs means it was lost
    single: bool = False  # write with FC6 (one register) instead of FC16
    rearms: bool = True  # writing it restarts the device's reversion timer (a reversion value does not)


class RegisterImage:
    """The registers read in one cycle, as contiguous spans of the holding (FC3) and input (FC4) tables."""

    def __init__(
        self, spans: Sequence[tuple[int, list[int]]], input_spans: Sequence[tuple[int, list[int]]] = (),
        started: float | None = None,
    ) -> None:
        self._spans = {"holding": spans, "input": input_spans}
        # When the registers were sampled (time.monotonic()): between the first request (`started`) and
        # the last answer (now, as the image is made of the answers), taken as the middle. The load
        # estimate pairs it with the meter's time, and while the output ramps, each request's worth of
        # error is many kW.
        now = time.monotonic()
        self.at = now if started is None else (started + now) / 2

    def regs(self, address: int, size: int, table: Table = "holding") -> list[int]:
        for start, regs in self._spans[table]:
            if start <= address and address + size <= start + len(regs):
                return regs[address - start : address - start + size]
        raise KeyError(f"{table} registers {address}..{address + size - 1} were not read")


def coalesce(ranges: Iterable[tuple[int, int]], max_gap: int | None = None) -> list[tuple[int, int]]:
    """(start, count) requests covering every [start, end) range, ≤ 125 registers each.

    Ranges are merged greedily while the result fits one request and the registers read through
    between them number at most `max_gap` (None: any): a SunSpec map is contiguous, but a vendor map
    may have holes that the device answers with exception 2.
    """
    spans: list[list[int]] = []
    for start, end in sorted(set(ranges)):
        if (
            spans
            and max(spans[-1][1], end) - spans[-1][0] <= MAX_READ_REGISTERS
            and (max_gap is None or start - spans[-1][1] <= max_gap)
        ):
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [(start, end - start) for start, end in spans]


@dataclass(slots=True)  # not frozen: made once a read and never kept, and a frozen one is slower to make
class Quantities:
    """What a driver read, in SI units and the device's own sign convention; None = not reported."""

    p_w: float | None
    q_var: float | None = None
    v: float | None = None
    v_nominal: float | None = None
    hz: float | None = None
    rated_w: float | None = None
    available_w: float | None = None
    max_charge_w: float | None = None
    max_discharge_w: float | None = None
    soc_pct: float | None = None
    soc_min_pct: float | None = None
    soc_max_pct: float | None = None
    connected: bool | None = None
    limit_pct: float | None = None  # the active power limit in force, % of rated_w
    setpoint_w: float | None = None  # the W command in force (device sign)


class SignedProfile(Protocol):
    @property
    def sign(self) -> int:
        """+1 when the device's positive W is ours (into the grid side), else -1."""
        ...


class BusDevice(Device):
    """A `Device` whose registers are read and written through a `ModbusUnit`, as its profile says."""

    _profile: SignedProfile  # subclasses narrow it to their kind of profile

    def __init__(
        self,
        cfg: DeviceConfig,
        *,
        unit: ModbusUnit,
        profile: SignedProfile,
        stale_after_s: float,
        on_write: WriteHook | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(cfg.id, cfg.kind, stale_after_s=stale_after_s, on_write=on_write, backoff=backoff)
        self._cfg = cfg
        self._unit = unit
        self._profile = profile
        self._sign = profile.sign
        # Timer registers hold whole seconds; refresh against what the device will actually count.
        self._reversion_s = max(1, round(cfg.reversion_timeout_s))
        self._refresh_s = self._reversion_s * REFRESH_FRACTION
        self._image: RegisterImage | None = None
        self._generation = -1  # the bus connection's generation at discovery
        self._applied_power: tuple[PointWrite, ...] | None = None
        self._power_written_at = -math.inf  # the last write that restarted the device's reversion timer
        self._applied_connect: tuple[PointWrite, ...] | None = None
        self._connect_written_at = -math.inf
        self._applying = asyncio.Lock()
        self._settled: Setpoint | None = None  # the command last applied in full, nothing left to write
        self._pv_available_w: float | None = None  # last estimate, for PV that does not report it

    @classmethod
    def from_config(
        cls,
        cfg: DeviceConfig,
        *,
        pool: ModbusPool,
        stale_after_s: float,
        on_write: WriteHook | None = None,
        profiles_dir: Path = PROFILES_DIR,
    ) -> Self:
        """Build the driver of a site-file device; devices on one bus share one connection."""
        profile = cls._load_profile(cfg, profiles_dir)  # first: a bad profile takes no connection
        unit = pool.unit_on(bus_spec(cfg), cfg.unit_id, cfg.timeout_s)
        return cls(cfg, unit=unit, profile=profile, stale_after_s=stale_after_s, on_write=on_write)

    @property
    def unit(self) -> ModbusUnit:
        """The Modbus unit this device talks to (its bus is shared with the other units on it)."""
        return self._unit

    # --- for subclasses -----------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def _load_profile(cls, cfg: DeviceConfig, directory: Path) -> SignedProfile:
        """The validated profile named by the device's `profile` (ProfileError if it is unusable)."""

    @abstractmethod
    async def _discover(self) -> None:
        """Find out where everything is (reading the device as needed), then `_discovered()` and read a
        first image."""

    @abstractmethod
    async def _read_image(self) -> RegisterImage:
        """Read every register the driver uses; store and return the image (`self._image`)."""

    @abstractmethod
    def _reading(self, image: RegisterImage) -> Reading: ...

    @abstractmethod
    def _power_plan(self, cmd: Setpoint) -> tuple[PointWrite, ...]:
        """The ordered writes of a power command (settings, value, reversion, timer, then enable)."""

    @abstractmethod
    def _connect_plan(self, cmd: Setpoint) -> tuple[PointWrite, ...]:
        """The ordered writes that connect or disconnect (timer, then the point); () when the device has no
        such control."""

    async def _after_apply(self, now: float) -> None:
        """After the command writes of a cycle (a protocol heartbeat, for instance)."""

    def _discovered(self) -> None:
        """Discovery is through: what was applied before is unknown on the (maybe rebooted) device."""
        self._generation = self._unit.generation
        self._applied_power = None
        self._applied_connect = None
        self._settled = None

    # --- Device hooks -------------------------------------------------------------------------------

    async def _connect(self) -> None:
        await self._discover()

    async def _recover(self) -> None:
        await self._discover()
        await self._reapply()

    async def _read(self) -> Reading:
        started = time.monotonic()
        image = await self._read_image()
        if self._unit.generation != self._generation:
            # The connection was re-made since discovery (by us or by another unit on the bus).
            await self._recover()
            assert self._image is not None
            image = self._image
        elif self._lost_command(image, started):
            await self._reapply()
        return self._reading(image)

    async def _write(self) -> None:
        await self._apply(force=False)

    async def _keep_alive(self) -> None:
        # Writes only when a refresh is due, and nothing before the first command: after a restart,
        # the first write a device sees carries the restored limits (TDC-19).
        cmd = self._command
        if cmd is None:
            return
        if cmd == self._settled and not self._refresh_due(time.monotonic()):
            # Nothing to work out: the command is on the device (the writer checks every new one
            # against the device's current image). Planning it afresh after every read was a tenth
            # of the gateway's time at 1,000 devices.
            async with self._applying:
                await self._after_apply(time.monotonic())
            return
        await self._apply(force=False)

    async def _close(self) -> None:
        await self._unit.close()

    # --- reading ------------------------------------------------------------------------------------

    def _reading_from(self, q: Quantities, image: RegisterImage) -> Reading:
        """A `Reading` in the gateway's sign convention, with what the device does not say estimated;
        `q` as `Device._checked` made it (usable values only, the active power among them)."""
        assert q.p_w is not None  # `_checked` fails a reading without it
        sign, rated_w = self._sign, q.rated_w
        available_w, max_charge_w = q.available_w, 0.0
        if self._kind == "pv" and available_w is None and rated_w:
            available_w = self._pv_available_w = _pv_available_w(q.p_w, rated_w, q.limit_pct,
                                                                 self._pv_available_w)
        elif self._kind == "battery":
            soc, soc_min, soc_max = q.soc_pct, q.soc_min_pct, q.soc_max_pct
            discharge = q.max_discharge_w or rated_w or 0.0
            charge = q.max_charge_w or rated_w or 0.0
            empty = soc is not None and soc_min is not None and soc <= soc_min
            full = soc is not None and soc_max is not None and soc >= soc_max
            available_w = 0.0 if empty else discharge
            max_charge_w = 0.0 if full else charge
        if q.setpoint_w is not None:
            setpoint_kw: float | None = sign * q.setpoint_w / 1000
        elif q.limit_pct is not None and rated_w is not None:
            setpoint_kw = q.limit_pct * rated_w / 100 / 1000
        else:
            setpoint_kw = None
        return Reading(
            p_kw=sign * q.p_w / 1000,
            q_kvar=None if q.q_var is None else sign * q.q_var / 1000,
            v_pu=q.v / q.v_nominal if q.v is not None and q.v_nominal else None,
            hz=q.hz,
            available_kw=None if available_w is None else available_w / 1000,
            max_charge_kw=max_charge_w / 1000,
            rated_kw=None if rated_w is None else rated_w / 1000,
            soc_pct=q.soc_pct,
            connected=q.connected,
            limit_pct=q.limit_pct,
            setpoint_kw=setpoint_kw,
            at=image.at,
        )

    def _lost_command(self, image: RegisterImage, read_started: float) -> bool:
        """The device no longer holds what we wrote, power command or connect state (it reverted, rebooted
        behind a gateway, or another master wrote): a held point reads back other than it was written.
        Judged only on a read that started after those points were written."""
        for applied, written_at in ((self._applied_power, self._power_written_at),
                                    (self._applied_connect, self._connect_written_at)):
            if applied is None or written_at >= read_started:
                continue
            if any(image.regs(w.address, len(w.regs)) != list(w.regs) for w in applied if w.held):
                return True
        return False

    # --- writing ------------------------------------------------------------------------------------

    def _power_target(self, cmd: Setpoint, unit: str, rated_w: float | None) -> float:
        """The command in the device's terms: % of rated (0..100) for a limit, else signed device W."""
        if not rated_w:
            raise DeviceFault(self.id, "cannot command: the device reports no rated power")
        if unit == "pct_of_rated":
            return min(100.0, max(0.0, cmd.p_kw * 1000 / rated_w * 100))
        return self._sign * min(rated_w, max(-rated_w, cmd.p_kw * 1000))

    async def _reapply(self) -> None:
        if self._command is not None:
            await self._apply(force=True)

    async def _apply(self, *, force: bool) -> None:
        """Write what of `self._command` is not yet on the device, or is due for a refresh."""
        # One at a time: a read's refresh or re-apply would otherwise start while the writer's sequence
        # is out, find nothing applied (see below), and write the whole sequence a second time.
        async with self._applying:
            await self._apply_now(force=force)

    async def _apply_now(self, *, force: bool) -> None:
        cmd = self._command
        assert cmd is not None and self._image is not None
        now = time.monotonic()
        power = self._power_plan(cmd)
        connect = self._connect_plan(cmd)
        if not connect and not cmd.connect:
            raise DeviceFault(self.id, "cannot disconnect: the device has no connect control in its profile")
        power_step = due_writes(power, self._applied_power, now - self._power_written_at, self._refresh_s,
                                force=force, purpose="setpoint")
        connect_step = None if not connect else due_writes(
            connect, self._applied_connect, now - self._connect_written_at, self._refresh_s, force=force,
            purpose="connect")
        if power_step or connect_step:
            self._settled = None  # until the writes are through
        # Energize only once the new limit is in place; cease to energize before anything else.
        order = [("power", power_step), ("connect", connect_step)]
        for what, step in order if cmd.connect else reversed(order):
            if step is None:
                continue
            writes, purpose = step
            if what == "power":
                self._applied_power = None  # until the whole sequence is through
                await self._write_points(writes, purpose)
                self._applied_power = power
                if any(w.rearms for w in writes):
                    self._power_written_at = now
            else:
                self._applied_connect = None
                await self._write_points(writes, purpose)
                self._applied_connect, self._connect_written_at = connect, now
        self._settled = cmd
        await self._after_apply(now)

    def _refresh_due(self, now: float) -> bool:
        """The power command or the connect state is due to be rewritten."""
        return now - self._power_written_at >= self._refresh_s or bool(
            self._applied_connect and now - self._connect_written_at >= self._refresh_s)

    async def _write_points(self, writes: Sequence[PointWrite], purpose: WritePurpose) -> None:
        """Write in order, one request per run of adjacent points; every point is recorded."""
        for group in _contiguous(writes):
            first = group[0]
            regs = [r for w in group for r in w.regs]
            result = "ok"
            try:
                with self._translated(f"write {', '.join(w.label for w in group)}"):
                    await self._unit.write(first.address, regs, single=first.single)
            except DeviceError as err:
                result = _result_of(err)
                raise
            finally:
                stamp = time.time()
                for w in group:
                    self._record(WriteRecord(self.id, w.label, w.address, w.raw, result, purpose, stamp))

    def _translated(self, what: str) -> _Translated:
        """Modbus errors → DeviceOffline (no answer) or DeviceFault (the device refused)."""
        return _Translated(self.id, what)


class _Translated:
    """`with device._translated(what):` (a class, not @contextmanager: the polling enters one for every
    read, and a generator-based one costs several times as much)."""

    __slots__ = ("_device_id", "_what")

    def __init__(self, device_id: str, what: str) -> None:
        self._device_id, self._what = device_id, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: object) -> None:
        if isinstance(err, ModbusError):
            cls = DeviceFault if isinstance(err, ModbusExceptionResponse) else DeviceOffline
            raise cls(self._device_id, f"{self._what}: {err}") from err
        if isinstance(err, ValueError):
            raise DeviceFault(self._device_id, f"{self._what}: {err}") from None


def _contiguous(writes: Sequence[PointWrite]) -> list[list[PointWrite]]:
    """Consecutive FC16 writes whose points are adjacent go in one request."""
    groups: list[list[PointWrite]] = []
    for w in writes:
        last = groups[-1] if groups else None
        if (
            last is not None
            and not w.single
            and not last[-1].single
            and last[-1].address + len(last[-1].regs) == w.address
            and sum(len(x.regs) for x in last) + len(w.regs) <= MAX_WRITE_REGISTERS
        ):
            last.append(w)
        else:
            groups.append([w])
    return groups


def _result_of(err: DeviceError) -> str:
    cause = err.__cause__
    if isinstance(cause, ModbusExceptionResponse):
        return f"exception {cause.code}"
    if isinstance(cause, ModbusTimeout):
        return "timeout"
    return "connection lost"


def _pv_available_w(p_w: float, rated_w: float, limit_pct: float | None, last_w: float | None) -> float:
    """What a PV inverter could produce now, when it does not say (the 70x models have no WAval).

    Below its limit by more than a small band, the inverter gives all the sun gives: its output is its
    available power. At its limit it could give more, how much is unknown: the last estimate stands (the
    nameplate before there is one), and the control loop probes above it to find out. Taking the
    nameplate every time instead would make the estimate jump between output and nameplate on
    alternate cycles whenever the limit sits at the available power.
    """
    limit_w = rated_w if limit_pct is None else rated_w * limit_pct / 100
    band_w = max(0.01 * rated_w, 500.0)
    if p_w < limit_w - band_w:
        return max(p_w, 0.0)
    return max(p_w, rated_w if last_w is None else last_w)
