"""SunSpec Modbus driver implementing `Device`.

Discovery: "SunS" at 40000, else 0, else 50000; then the model headers are walked (`addr += L + 2`)
to the end model 0xFFFF, tolerating a device that answers exception 2 past its last model instead.
The device profile (`device_profiles/sunspec_<role>.toml`) then picks the first variant whose models
are all present (IEEE 1547-2018 70x models before the legacy 10x/12x ones) and names the points used.

Reads: every register the driver uses (values *and their scale factors*, which sit in the same model
block) is read every cycle, in as few requests as possible (≤ 125 registers each, at most one per
model block), so a scale factor that changes is never applied to the wrong value. Points the device
marks not implemented read as None.

Writes: only the points the driver means to change, never a whole block: the value, fixed settings
and the reversion value and timer first, then the enable, so the device never runs the new mode with
stale parameters. The power command is rewritten when it changes and, unchanged, every
`REFRESH_FRACTION` × the reversion timeout, which keeps the device's reversion timer from running out
while the gateway lives. After a reconnect (the device may have rebooted and lost its volatile
registers) the map is discovered again and the last command re-applied; likewise when the read-back
shows the device no longer holds the written command (it reverted, or another master wrote).
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
)
from gateway.south.modbus_client import (
    MAX_READ_REGISTERS,
    MAX_WRITE_REGISTERS,
    ModbusError,
    ModbusExceptionResponse,
    ModbusPool,
    ModbusTimeout,
    ModbusUnit,
)
from gateway.south.profile import PROFILES_DIR, PowerControl, Profile, StatusPoint, Variant, load_profile
from gateway.south.sunspec_models import (
    BASE_ADDRESSES,
    END_MODEL_ID,
    SUNS_MARKER,
    ModelDef,
    PointDef,
    Value,
    apply_sf,
    decode,
    encode,
    model_def,
    to_raw,
)

# Unchanged commands are rewritten at this fraction of the reversion timeout: under half, so that one
# missed cycle (a slow read, a retried request) still leaves the device holding the setpoint.
REFRESH_FRACTION = 0.4
HEARTBEAT_PERIOD_S = 1.0  # 715 ControllerHb: "incremented every second by the controller"
_HEARTBEAT_WRAP = 0xFFFFFFFF  # uint32's not-implemented sentinel: wrap to 0 before reaching it
_ILLEGAL_DATA_ADDRESS = 2


@dataclass(frozen=True)
class FoundModel:
    """A model instance found by discovery."""

    id: int
    address: int  # absolute address of its ID register
    length: int  # L as the device reports it (may differ from the definition on non-conforming maps)

    @property
    def mdef(self) -> ModelDef:
        return model_def(self.id)


@dataclass(frozen=True)
class Discovery:
    base: int
    models: dict[int, FoundModel]  # first instance of each model id, in map order


async def discover(unit: ModbusUnit) -> Discovery:
    """Find the SunSpec map behind `unit`: base address and model list (raises ModbusError or ValueError)."""
    for base in BASE_ADDRESSES:
        try:
            if tuple(await unit.read(base, 2)) == SUNS_MARKER:
                break
        except ModbusExceptionResponse as err:
            if err.code != _ILLEGAL_DATA_ADDRESS:
                raise
    else:
        raise ValueError(f"no SunSpec map: no 'SunS' marker at {', '.join(map(str, BASE_ADDRESSES))}")
    models: dict[int, FoundModel] = {}
    address = base + 2
    while True:
        try:
            model_id, length = await unit.read(address, 2)
        except ModbusExceptionResponse as err:
            if err.code != _ILLEGAL_DATA_ADDRESS:
                raise
            break  # a map that ends without the end model: seen on real devices, tolerated
        if model_id == END_MODEL_ID:
            break
        if model_id not in models:
            models[model_id] = FoundModel(model_id, address, length)
        address += length + 2
    return Discovery(base, models)


@dataclass(frozen=True)
class Bound:
    """A profile point reference bound to an address on this device."""

    label: str  # "704.WMaxLimPct"
    address: int
    pdef: PointDef
    sf: Bound | int | None  # the bound scale-factor point, a fixed exponent, or None (unscaled)


class Image:
    """The registers read in one cycle, as contiguous spans."""

    def __init__(self, spans: Sequence[tuple[int, list[int]]]) -> None:
        self._spans = spans

    def regs(self, address: int, size: int) -> list[int]:
        for start, regs in self._spans:
            if start <= address and address + size <= start + len(regs):
                return regs[address - start : address - start + size]
        raise KeyError(f"registers {address}..{address + size - 1} were not read")

    def raw(self, point: Bound) -> Value | None:
        return decode(point.pdef, self.regs(point.address, point.pdef.size))

    def exponent(self, point: Bound) -> int | None:
        """The scale factor of `point`: 0 when unscaled, None when the device does not implement it."""
        if point.sf is None:
            return 0
        if isinstance(point.sf, int):
            return point.sf
        raw = self.raw(point.sf)
        return None if raw is None else int(raw)

    def value(self, point: Bound) -> float | None:
        raw = self.raw(point)
        if isinstance(raw, str):
            raise TypeError(f"{point.label} is a string, not a number")
        return apply_sf(raw, self.exponent(point))


class BoundMap:
    """A profile variant bound to what discovery found: the address of every point the driver uses."""

    def __init__(self, variant: Variant, found: dict[int, FoundModel]) -> None:
        self.variant = variant
        self._models: dict[str, FoundModel] = {}
        for alias, ids in (*variant.models.items(), *variant.optional_models.items()):
            model = next((found[mid] for mid in ids if mid in found), None)
            if model is not None:
                self._models[alias] = model
        self.models = sorted({m.id for m in self._models.values()})

    @classmethod
    def choose(cls, profile: Profile, found: dict[int, FoundModel]) -> BoundMap:
        """The first variant whose required models are all present."""
        for variant in profile.variants:
            if all(any(mid in found for mid in ids) for ids in variant.models.values()):
                return cls(variant, found)
        wanted = "; ".join(
            f"{v.name}: {' + '.join('/'.join(map(str, ids)) for ids in v.models.values())}"
            for v in profile.variants
        )
        raise ValueError(f"found models {sorted(found)}, but the profile needs one of ({wanted})")

    def bind(self, ref: str) -> Bound | None:
        """`alias.Point` on this device, or None if its model is absent or too short to hold it."""
        alias, _, name = ref.partition(".")
        model = self._models.get(alias)
        if model is None:
            return None
        return self._bind_point(model, name)

    def require(self, ref: str) -> Bound:
        point = self.bind(ref)
        if point is None:
            raise ValueError(f"{ref}: the device's model does not hold this point")
        return point

    def _bind_point(self, model: FoundModel, name: str) -> Bound | None:
        pdef = model.mdef.points[name]
        if pdef.offset + pdef.size > model.length + 2:
            return None
        sf: Bound | int | None = pdef.sf if not isinstance(pdef.sf, str) else self._bind_point(model, pdef.sf)
        if isinstance(pdef.sf, str) and sf is None:
            return None  # its scale factor lies outside the model: unusable
        return Bound(f"{model.id}.{name}", model.address + pdef.offset, pdef, sf)

    def candidates(self, refs: Sequence[str]) -> list[Bound]:
        return [b for b in map(self.bind, refs) if b is not None]


def read_spans(points: Sequence[Bound]) -> list[tuple[int, int]]:
    """(start, count) requests covering every point and its scale factor, ≤ 125 registers each.

    Everything between the base and the end model is part of the map, so gaps between needed points
    may be read through; spans are merged greedily while they fit one request.
    """
    ranges: set[tuple[int, int]] = set()
    for p in points:
        ranges.add((p.address, p.address + p.pdef.size))
        if isinstance(p.sf, Bound):
            ranges.add((p.sf.address, p.sf.address + 1))
    spans: list[list[int]] = []
    for start, end in sorted(ranges):
        if spans and max(spans[-1][1], end) - spans[-1][0] <= MAX_READ_REGISTERS:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [(start, end - start) for start, end in spans]


@dataclass(frozen=True)
class _Write:
    point: Bound
    raw: int


class SunSpecDevice(Device):
    """A PV inverter, battery or meter speaking SunSpec Modbus."""

    def __init__(
        self,
        cfg: DeviceConfig,
        *,
        unit: ModbusUnit,
        profile: Profile,
        stale_after_s: float,
        on_write: WriteHook | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(cfg.id, cfg.kind, stale_after_s=stale_after_s, on_write=on_write, backoff=backoff)
        self._cfg = cfg
        self._unit = unit
        self._profile = profile
        # The timer points hold whole seconds; refresh against what the device will actually count.
        self._reversion_s = max(1, round(cfg.reversion_timeout_s))
        self._refresh_s = self._reversion_s * REFRESH_FRACTION
        self._map: BoundMap | None = None
        self._read_points: dict[str, list[Bound]] = {}
        self._power_points: _PowerPoints | None = None
        self._heartbeat_point: Bound | None = None
        self._spans: list[tuple[int, int]] = []
        self._image: Image | None = None
        self._generation = -1  # the endpoint's connection generation at discovery
        self._applied_power: tuple[_Write, ...] | None = None
        self._power_written_at = -math.inf
        self._applied_connect: bool | None = None
        self._heartbeat: int | None = None
        self._heartbeat_at = -math.inf
        self._pv_available_w: float | None = None  # last estimate, for PV without WAval

    @classmethod
    def from_config(
        cls,
        cfg: DeviceConfig,
        *,
        pool: ModbusPool,
        stale_after_s: float,
        on_write: WriteHook | None = None,
        profiles_dir: Path = PROFILES_DIR,
    ) -> SunSpecDevice:
        """Build the driver of a site-file device; devices sharing host:port share one connection."""
        profile = load_profile(cfg.profile, cfg.kind, profiles_dir)
        unit = pool.unit(cfg.host, cfg.port, cfg.unit_id, cfg.timeout_s)
        return cls(cfg, unit=unit, profile=profile, stale_after_s=stale_after_s, on_write=on_write)

    @property
    def unit(self) -> ModbusUnit:
        """The Modbus unit this device talks to (its endpoint is shared with other units at host:port)."""
        return self._unit

    @property
    def discovery(self) -> tuple[str, list[int]] | None:
        """(variant name, model ids in use) after discovery."""
        return None if self._map is None else (self._map.variant.name, self._map.models)

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
            # The connection was re-made since discovery (by us or by another unit on the endpoint):
            # the device may have rebooted, with another map and none of our setpoints.
            await self._recover()
            image = self._image
            assert image is not None
        elif self._lost_power_command(image, started):
            await self._reapply()
        return self._reading(image)

    @property
    def read_spans(self) -> list[tuple[int, int]]:
        """(address, count) of the requests one read makes: benchmarks repeat them with bare pymodbus."""
        return list(self._spans)

    async def _write(self) -> None:
        await self._apply(force=False)

    async def _keep_alive(self) -> None:
        # Writes only when a refresh or a heartbeat is due, and nothing before the first command: after
        # a restart, the first write a device sees carries the restored limits (TDC-19).
        if self._command is not None:
            await self._apply(force=False)

    async def _close(self) -> None:
        await self._unit.close()

    # --- discovery and reads ------------------------------------------------------------------------

    async def _discover(self) -> None:
        with self._translated("discovery"):
            found = await discover(self._unit)
            self._generation = self._unit.generation
        try:
            bound = BoundMap.choose(self._profile, found.models)
            read_points = {
                field: bound.candidates(refs)
                for field, refs in self._profile_read_refs(bound.variant).items()
            }
            if not read_points["p_w"]:
                raise ValueError("no active power point (read.p_w) on this device")
            if self._kind != "meter" and not read_points["rated_w"]:
                raise ValueError("no rated power point (read.rated_w) on this device")
            power = self._bind_power(bound)
            # Read back what we write: the command in force, and the scale factors of what we write.
            extra = [power.value, power.enable, *filter(None, [power.reversion_value])] if power else []
            heartbeat = bound.bind(bound.variant.heartbeat) if bound.variant.heartbeat else None
        except ValueError as err:
            raise DeviceFault(self.id, f"{err} (profile {self._cfg.profile!r}, kind {self._kind})") from None
        self._map = bound
        self._read_points = read_points
        self._power_points = power
        self._heartbeat_point = heartbeat
        self._spans = read_spans([p for ps in read_points.values() for p in ps] + extra)
        self._applied_power = None
        self._applied_connect = None
        self._heartbeat = None
        if heartbeat is not None:  # read once: from here on we count it up ourselves
            with self._translated("read heartbeat"):
                regs = await self._unit.read(heartbeat.address, heartbeat.pdef.size)
            self._heartbeat = int(decode(heartbeat.pdef, regs) or 0)
        await self._read_image()

    def _profile_read_refs(self, variant: Variant) -> dict[str, list[str]]:
        refs = {f: v for f, v in variant.read if not isinstance(v, StatusPoint) and v is not None}
        status = variant.read.connected
        refs["connected"] = [status.point] if status else []
        return refs

    def _bind_power(self, bound: BoundMap) -> _PowerPoints | None:
        pc = bound.variant.power
        if pc is None:
            return None
        return _PowerPoints(
            control=pc,
            value=bound.require(pc.value),
            enable=bound.require(pc.enable),
            settings=[(bound.require(ref), sym) for ref, sym in pc.settings.items()],
            reversion_value=bound.bind(pc.reversion_value) if pc.reversion_value else None,
            reversion_enable=bound.bind(pc.reversion_enable) if pc.reversion_enable else None,
            reversion_timer=bound.require(pc.reversion_timer),
            connect=bound.bind(bound.variant.connect.point) if bound.variant.connect else None,
        )

    async def _read_image(self) -> Image:
        with self._translated("read"):
            spans = [(start, await self._unit.read(start, count)) for start, count in self._spans]
        self._image = Image(spans)
        return self._image

    def _first(self, field: str, image: Image) -> float | None:
        for point in self._read_points[field]:
            value = image.value(point)
            if value is not None:
                return value
        return None

    def _status(self, image: Image) -> bool | None:
        status = self._map.variant.read.connected if self._map else None
        points = self._read_points["connected"]
        if status is None or not points:
            return None
        raw = image.raw(points[0])
        if raw is None:
            return None
        symbols = [points[0].pdef.symbols[s] for s in status.true_if]
        if points[0].pdef.type.startswith("bitfield"):
            return any(int(raw) >> bit & 1 for bit in symbols)
        return raw in symbols

    def _reading(self, image: Image) -> Reading:
        sign = self._profile.sign
        p_w = self._first("p_w", image)
        if p_w is None:
            raise DeviceFault(self.id, "the device reports its active power as not implemented")
        q_var = self._first("q_var", image)
        v, v_nom = self._first("v", image), self._first("v_nominal", image)
        rated_w = self._first("rated_w", image)
        available_w = self._first("available_w", image)
        max_charge_w = 0.0
        soc = self._first("soc_pct", image)
        limit_pct, setpoint_kw = self._read_back(image, rated_w)
        if self._kind == "pv" and available_w is None and rated_w:
            available_w = self._pv_available_w = _pv_available_w(p_w, rated_w, limit_pct,
                                                                 self._pv_available_w)
        elif self._kind == "battery":
            soc_min, soc_max = self._first("soc_min_pct", image), self._first("soc_max_pct", image)
            discharge = self._first("max_discharge_w", image) or rated_w or 0.0
            charge = self._first("max_charge_w", image) or rated_w or 0.0
            empty = soc is not None and soc_min is not None and soc <= soc_min
            full = soc is not None and soc_max is not None and soc >= soc_max
            available_w = 0.0 if empty else discharge
            max_charge_w = 0.0 if full else charge
        return Reading(
            p_kw=sign * p_w / 1000,
            q_kvar=None if q_var is None else sign * q_var / 1000,
            v_pu=v / v_nom if v is not None and v_nom else None,
            hz=self._first("hz", image),
            available_kw=None if available_w is None else available_w / 1000,
            max_charge_kw=max_charge_w / 1000,
            rated_kw=None if rated_w is None else rated_w / 1000,
            soc_pct=soc,
            connected=self._status(image),
            limit_pct=limit_pct,
            setpoint_kw=setpoint_kw,
            at=time.monotonic(),
        )

    def _read_back(self, image: Image, rated_w: float | None) -> tuple[float | None, float | None]:
        """(limit_pct, setpoint_kw) in force according to the device's control registers."""
        pp = self._power_points
        if pp is None or image.raw(pp.enable) != pp.enable.pdef.symbols[pp.control.enabled]:
            return None, None
        value = image.value(pp.value)
        if value is None:
            return None, None
        if pp.control.unit == "pct_of_rated":
            return value, None if rated_w is None else value * rated_w / 100 / 1000
        return None, self._profile.sign * value / 1000

    def _lost_power_command(self, image: Image, read_started: float) -> bool:
        """The device no longer holds what we wrote (it reverted, rebooted behind a gateway, or
        another master wrote): the value or enable read back differs from the last write."""
        if self._applied_power is None or self._power_written_at >= read_started:
            return False
        pp = self._power_points
        assert pp is not None
        held = (w for w in self._applied_power if w.point in (pp.value, pp.enable))
        return any(image.raw(w.point) != w.raw for w in held)

    # --- writes -------------------------------------------------------------------------------------

    async def _reapply(self) -> None:
        if self._command is not None:
            await self._apply(force=True)

    async def _apply(self, *, force: bool) -> None:
        """Write what of `self._command` is not yet on the device, or is due for a refresh."""
        cmd, pp = self._command, self._power_points
        assert cmd is not None and pp is not None and self._image is not None
        now = time.monotonic()
        power = self._power_plan(cmd, pp, self._image)
        power_step: tuple[list[_Write], WritePurpose] | None = None
        if force or power != self._applied_power:
            power_step = (list(power), "reapply" if force else "setpoint")
        elif now - self._power_written_at >= self._refresh_s:
            power_step = (list(power), "refresh")
        connect_step: tuple[list[_Write], WritePurpose] | None = None
        if pp.connect is not None and (force or cmd.connect != self._applied_connect):
            connect_step = ([self._connect_plan(cmd, pp)], "reapply" if force else "connect")
        elif pp.connect is None and not cmd.connect:
            raise DeviceFault(self.id, "cannot disconnect: the device has no connect control in its profile")
        # Energize only once the new limit is in place; cease to energize before anything else.
        order = [("power", power_step), ("connect", connect_step)]
        for what, step in order if cmd.connect else reversed(order):
            if step is None:
                continue
            if what == "power":
                self._applied_power = None  # until the whole sequence is through
                await self._write_points(*step)
                self._applied_power, self._power_written_at = power, now
            else:
                self._applied_connect = None
                await self._write_points(*step)
                self._applied_connect = cmd.connect
        await self._beat(now)

    def _power_plan(self, cmd: Setpoint, pp: _PowerPoints, image: Image) -> tuple[_Write, ...]:
        """The ordered writes of a power command: settings, value, reversion, timer, then enable."""
        pc = pp.control
        rated_w = self._first("rated_w", image)
        if not rated_w:
            raise DeviceFault(self.id, "cannot command: the device reports no rated power")
        if pc.unit == "pct_of_rated":
            target = min(100.0, max(0.0, cmd.p_kw * 1000 / rated_w * 100))
            reversion = self._cfg.safe_limit_pct if pc.reversion == "safe_limit_pct" else pc.reversion
        else:
            sign = self._profile.sign
            target = sign * min(rated_w, max(-rated_w, cmd.p_kw * 1000))
            reversion = sign * float(pc.reversion)  # the profile's validator keeps this numeric for W
        writes = [_Write(p, p.pdef.symbols[sym]) for p, sym in pp.settings]
        writes.append(_Write(pp.value, self._scaled(pp.value, target, image)))
        if pp.reversion_value is not None:
            writes.append(_Write(pp.reversion_value, self._scaled(pp.reversion_value, reversion, image)))
        if pp.reversion_enable is not None:
            writes.append(_Write(pp.reversion_enable, pp.reversion_enable.pdef.symbols[pc.enabled]))
        # 0 = no reversion: a device without a reversion value keeps the last limit (see the profile)
        writes.append(_Write(pp.reversion_timer, 0 if pc.hold_last_on_loss else self._reversion_s))
        writes.append(_Write(pp.enable, pp.enable.pdef.symbols[pc.enabled]))
        return tuple(writes)

    def _connect_plan(self, cmd: Setpoint, pp: _PowerPoints) -> _Write:
        cc = self._map.variant.connect if self._map else None
        assert cc is not None and pp.connect is not None
        return _Write(pp.connect, pp.connect.pdef.symbols[cc.connect if cmd.connect else cc.disconnect])

    def _scaled(self, point: Bound, value: float, image: Image) -> int:
        sf = image.exponent(point)
        if sf is None:
            raise DeviceFault(self.id, f"cannot write {point.label}: its scale factor is not implemented")
        return to_raw(value, sf)

    async def _beat(self, now: float) -> None:
        """715 ControllerHb: tells the DER its controller is alive; at most once a second."""
        point = self._heartbeat_point
        if point is None or now - self._heartbeat_at < HEARTBEAT_PERIOD_S:
            return
        value = ((self._heartbeat or 0) + 1) % _HEARTBEAT_WRAP
        await self._write_points([_Write(point, value)], "heartbeat")
        self._heartbeat, self._heartbeat_at = value, now

    async def _write_points(self, writes: Sequence[_Write], purpose: WritePurpose) -> None:
        """Write in order, one request per run of adjacent points; every point is recorded."""
        for group in _contiguous(writes):
            start = group[0].point.address
            try:
                regs = [r for w in group for r in encode(w.point.pdef, w.raw)]
            except struct.error:
                labels = ", ".join(f"{w.point.label}={w.raw}" for w in group)
                raise DeviceFault(self.id, f"value out of range for the point: {labels}") from None
            result = "ok"
            try:
                with self._translated(f"write {', '.join(w.point.label for w in group)}"):
                    await self._unit.write(start, regs)
            except DeviceError as err:
                result = _result_of(err)
                raise
            finally:
                stamp = time.time()
                for w in group:
                    p = w.point
                    self._record(WriteRecord(self.id, p.label, p.address, w.raw, result, purpose, stamp))

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """Modbus errors → DeviceOffline (no answer) or DeviceFault (the device refused)."""
        try:
            yield
        except ModbusError as err:
            cls = DeviceFault if isinstance(err, ModbusExceptionResponse) else DeviceOffline
            raise cls(self.id, f"{what}: {err}") from err
        except ValueError as err:
            raise DeviceFault(self.id, f"{what}: {err}") from None


@dataclass(frozen=True)
class _PowerPoints:
    control: PowerControl
    value: Bound
    enable: Bound
    settings: list[tuple[Bound, str]]
    reversion_value: Bound | None
    reversion_enable: Bound | None
    reversion_timer: Bound
    connect: Bound | None


def _contiguous(writes: Sequence[_Write]) -> list[list[_Write]]:
    """Consecutive writes whose points are adjacent in the map go in one request."""
    groups: list[list[_Write]] = []
    for w in writes:
        last = groups[-1] if groups else None
        if (
            last is not None
            and last[-1].point.address + last[-1].point.pdef.size == w.point.address
            and sum(x.point.pdef.size for x in last) + w.point.pdef.size <= MAX_WRITE_REGISTERS
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
