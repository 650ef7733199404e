"""SunSpec Modbus driver implementing `Device`.

Discovery: "SunS" at 40000, else 0, else 50000; then the model headers are walked (`addr += L + 2`)
to the end model 0xFFFF, tolerating a device that answers exception 2 past its last model instead.
The device profile (`device_profiles/sunspec_<role>.toml`) then picks the first variant whose models
are all present (IEEE 1547-2018 70x models before the legacy 10x/12x ones) and names the points used.

Reads: every register the driver uses (values *and their scale factors*, which sit in the same model
block) is read every cycle, in as few requests as possible (≤ 125 registers each, at most one per
model block), so a scale factor that changes is never applied to the wrong value. Points the device
marks not implemented read as None; a value under a scale factor outside -10…10, or one that is not
finite or not plausible for the device (`plausible`), is unusable: the next point the profile names
for that quantity is tried, and without one the quantity is not reported (a reading without active
power fails, naming the point and its raw value).

Writes: only the points the driver means to change, never a whole block: the value, fixed settings
and the reversion value and timer first, then the enable, so the device never runs the new mode with
stale parameters. When to write (changes, refreshes before the reversion timer runs out, re-applying
after a reconnect or a lost command) is decided by `BusDevice`, shared with the vendor-profile driver.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from gateway.config import DeviceConfig
from gateway.south.backoff import Backoff
from gateway.south.bus_device import (
    REFRESH_FRACTION,
    BusDevice,
    PointWrite,
    Quantities,
    RegisterImage,
    coalesce,
)
from gateway.south.device import DeviceFault, Reading, Setpoint, WriteHook
from gateway.south.modbus_client import ModbusExceptionResponse, ModbusUnit
from gateway.south.plausible import MAX_W, Sample, Unusable, pick
from gateway.south.profile import PowerControl, Profile, StatusPoint, Variant, load_profile
from gateway.south.sunspec_models import (
    BASE_ADDRESSES,
    END_MODEL_ID,
    SUNS_MARKER,
    ModelDef,
    PointDef,
    PointError,
    Value,
    apply_sf,
    check_sf,
    decode,
    encode,
    model_def,
    to_raw,
)

__all__ = ["REFRESH_FRACTION", "Bound", "Image", "SunSpecDevice", "discover", "read_spans"]

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


_UNREAD = object()


class Image(RegisterImage):
    """The registers read in one cycle, as contiguous spans, decoded as SunSpec points."""

    def __init__(self, spans: Sequence[tuple[int, list[int]]], started: float | None = None) -> None:
        super().__init__(spans, started=started)
        # each point decoded once per read: a scale factor serves several values
        self._raw: dict[int, Value | None] = {}

    def raw(self, point: Bound) -> Value | None:
        """The raw value of `point`, None when not implemented; Unusable when its registers do not
        decode (a string that is not UTF-8)."""
        # each point decoded once a read; a get with a default, not try/except KeyError or a test and a
        # lookup: a reading decodes a dozen points, thousands of readings a second at scale
        decoded = self._raw
        value = decoded.get(point.address, _UNREAD)
        if value is _UNREAD:
            pdef = point.pdef
            regs = self.regs(point.address, pdef.size)
            try:
                value = decoded[point.address] = pdef.decode(regs)
            except PointError as err:
                raise Unusable(point.label, regs, str(err)) from None
        return value  # type: ignore[return-value]

    def exponent(self, point: Bound) -> int | None:
        """The scale factor of `point`: 0 when unscaled, None when the device does not implement it;
        Unusable when it is outside SunSpec's -10…10."""
        if point.sf is None:
            return 0
        if isinstance(point.sf, int):
            return point.sf
        raw = self.raw(point.sf)
        if raw is None:
            return None
        try:
            return check_sf(int(raw))
        except PointError as err:
            raise Unusable(point.sf.label, raw, str(err)) from None

    def value(self, point: Bound) -> float | None:
        """The engineering value of `point`, None when not implemented; Unusable when it cannot be
        decoded (a string, a scale factor outside -10…10, a number that is not finite)."""
        raw = self.raw(point)
        try:
            return apply_sf(raw, self.exponent(point))
        except PointError as err:
            raise Unusable(point.label, raw, str(err)) from None

    def sample(self, point: Bound) -> Sample:
        """`point` as read, unusable or not (see `plausible.Sample`)."""
        label = point.label
        try:
            raw = self.raw(point)
        except Unusable as err:
            return Sample(label, err.raw, None, err.why)
        try:
            sf = self.exponent(point)
        except Unusable as err:  # its scale factor is the culprit: say both
            return Sample(label, f"{raw} under {err.point} = {err.raw}", None, err.why)
        try:
            return Sample(label, raw, apply_sf(raw, sf), sf=sf or 0)
        except PointError as err:
            return Sample(label, raw, None, str(err), sf=sf or 0)


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
    return coalesce(ranges)


class SunSpecDevice(BusDevice):
    """A PV inverter, battery or meter speaking SunSpec Modbus."""

    _profile: Profile

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
        super().__init__(cfg, unit=unit, profile=profile, stale_after_s=stale_after_s, on_write=on_write,
                         backoff=backoff)
        self._map: BoundMap | None = None
        self._read_points: dict[str, list[Bound]] = {}
        self._quantities: list[tuple[str, list[Bound]]] = []  # (Quantities field, its points), if any
        self._power_points: _PowerPoints | None = None
        self._heartbeat_point: Bound | None = None
        self._spans: list[tuple[int, int]] = []
        self._image: Image | None = None
        self._heartbeat: int | None = None
        self._heartbeat_at = -math.inf

    @classmethod
    def _load_profile(cls, cfg: DeviceConfig, directory: Path) -> Profile:
        return load_profile(cfg.profile, cfg.kind, directory)

    @property
    def discovery(self) -> tuple[str, list[int]] | None:
        """(variant name, model ids in use) after discovery."""
        return None if self._map is None else (self._map.variant.name, self._map.models)

    @property
    def read_spans(self) -> list[tuple[int, int]]:
        """(address, count) of the requests one read makes: benchmarks repeat them with bare pymodbus."""
        return list(self._spans)

    # --- discovery and reads ------------------------------------------------------------------------

    async def _discover(self) -> None:
        with self._translated("discovery"):
            found = await discover(self._unit)
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
            # Read back what we write: the command in force, its connect state, and the scale factors of
            # what we write.
            extra = [power.value, power.enable, *filter(None, [power.reversion_value, power.connect])
                     ] if power else []
            heartbeat = bound.bind(bound.variant.heartbeat) if bound.variant.heartbeat else None
        except ValueError as err:
            raise DeviceFault(self.id, f"{err} (profile {self._cfg.profile!r}, kind {self._kind})") from None
        self._map = bound
        self._read_points = read_points
        self._quantities = [(f, ps) for f, ps in read_points.items() if ps and f in _QUANTITIES]
        self._power_points = power
        self._heartbeat_point = heartbeat
        self._spans = read_spans([p for ps in read_points.values() for p in ps] + extra)
        self._discovered()
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
        pc, cc = bound.variant.power, bound.variant.connect
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
            connect=bound.bind(cc.point) if cc else None,
            connect_timer=bound.bind(cc.reversion_timer) if cc and cc.reversion_timer else None,
        )

    async def _read_image(self) -> Image:
        started = time.monotonic()
        spans = []
        with self._translated("read"):
            for start, count in self._spans:  # a loop, not a comprehension: one coroutine less per request
                spans.append((start, await self._unit.read(start, count)))
        self._image = Image(spans, started=started)
        return self._image

    def _first(self, field: str, image: RegisterImage) -> float | None:
        """The first usable value of a quantity the profile reads (used by writes: the rating)."""
        assert isinstance(image, Image)
        return pick(field, map(image.sample, self._read_points[field]), MAX_W)[0]

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

    def _reading(self, image: RegisterImage) -> Reading:
        assert isinstance(image, Image)
        # only the quantities this device has points for (a PV inverter has no state of charge), each
        # point decoded only if the ones before it were not usable
        samples: dict[str, Iterable[Sample]] = {f: map(image.sample, ps) for f, ps in self._quantities}
        samples.update(self._read_back(image))
        return self._reading_from(Quantities(**self._checked(samples), connected=self._status(image)), image)

    def _read_back(self, image: Image) -> dict[str, list[Sample]]:
        """The command in force according to the device's control registers: `limit_pct` (in %) or
        `setpoint_w` (in device W), or nothing when no command is enabled."""
        pp = self._power_points
        if pp is None or image.raw(pp.enable) != pp.enable.pdef.symbols[pp.control.enabled]:
            return {}
        return {"limit_pct" if pp.control.unit == "pct_of_rated" else "setpoint_w": [image.sample(pp.value)]}

    # --- writes -------------------------------------------------------------------------------------

    def _power_plan(self, cmd: Setpoint) -> tuple[PointWrite, ...]:
        """The ordered writes of a power command: settings, value, reversion, timer, then enable."""
        pp, image = self._power_points, self._image
        assert pp is not None and image is not None
        pc = pp.control
        rated_w = self._first("rated_w", image)
        target = self._power_target(cmd, pc.unit, rated_w)
        assert rated_w  # _power_target refuses a device without one
        writes = [self._point_write(p, p.pdef.symbols[sym]) for p, sym in pp.settings]
        writes.append(self._point_write(pp.value, self._scaled(pp.value, target, image), held=True))
        if pp.reversion_value is not None:
            # What the device does once the gateway has stopped: the lower of its own safe value and the
            # command's revert_kw (its share of the LDC limits in force, 0 under cease_to_energize).
            if pc.unit == "pct_of_rated":
                own = self._cfg.safe_limit_pct if pc.reversion == "safe_limit_pct" else float(pc.reversion)
                pct = cmd.revert_cap_w(own / 100 * rated_w) / rated_w * 100
                raw = self._scaled(pp.reversion_value, pct, image, down=True)  # rounded down: never above it
            else:  # a signed W setpoint: never more discharge than revert_kw; a charge value stands
                reversion = cmd.revert_cap_w(float(pc.reversion))  # the validator keeps it numeric for W
                raw = self._scaled(pp.reversion_value, self._sign * reversion, image)
            writes.append(self._point_write(pp.reversion_value, raw, rearms=False))
        if pp.reversion_enable is not None:
            enabled = pp.reversion_enable.pdef.symbols[pc.enabled]
            writes.append(self._point_write(pp.reversion_enable, enabled, rearms=False))
        # A model without a reversion value drops the limit when its timer runs out: 0 = no reversion,
        # the device keeps this command, unless full output is within what it may do then.
        keep = pc.reverts_to_no_limit and cmd.held_on_timeout(self._cfg.safe_limit_pct, rated_w)
        writes.append(self._point_write(pp.reversion_timer, 0 if keep else self._reversion_s))
        writes.append(self._point_write(pp.enable, pp.enable.pdef.symbols[pc.enabled], held=True))
        return tuple(writes)

    def _connect_plan(self, cmd: Setpoint) -> tuple[PointWrite, ...]:
        cc = self._map.variant.connect if self._map else None
        pp = self._power_points
        if cc is None or pp is None or pp.connect is None:
            return ()
        symbol = cc.connect if cmd.connect else cc.disconnect
        # its timeout first, as 0: the state holds when the gateway stops (123 would go back to CONNECT)
        timer = () if pp.connect_timer is None else (self._point_write(pp.connect_timer, 0),)
        return (*timer, self._point_write(pp.connect, pp.connect.pdef.symbols[symbol], held=True))

    def _point_write(self, point: Bound, raw: int, *, held: bool = False, rearms: bool = True) -> PointWrite:
        try:
            regs = tuple(encode(point.pdef, raw))
        except PointError:
            raise DeviceFault(self.id, f"value out of range for the point: {point.label}={raw}") from None
        return PointWrite(point.label, point.address, raw, regs, held=held, rearms=rearms)

    def _scaled(self, point: Bound, value: float, image: Image, *, down: bool = False) -> int:
        """The raw value of `value` under the point's scale factor, rounded (or `down`)."""
        try:
            sf = image.exponent(point)
            if sf is None:
                raise DeviceFault(self.id, f"cannot write {point.label}: its scale factor is not implemented")
            return math.floor(value / 10.0**sf + 1e-9) if down else to_raw(value, sf)
        except (Unusable, PointError) as err:  # a scale factor the device sent outside -10…10
            raise DeviceFault(self.id, f"cannot write {point.label}: {err}") from None

    async def _after_apply(self, now: float) -> None:
        """715 ControllerHb: tells the DER its controller is alive; at most once a second."""
        point = self._heartbeat_point
        if point is None or now - self._heartbeat_at < HEARTBEAT_PERIOD_S:
            return
        value = ((self._heartbeat or 0) + 1) % _HEARTBEAT_WRAP
        await self._write_points([self._point_write(point, value)], "heartbeat")
        self._heartbeat, self._heartbeat_at = value, now


# The Quantities read from a point of their own (not connected, limit_pct, setpoint_w).
_QUANTITIES = frozenset(f.name for f in fields(Quantities)) - {"connected", "limit_pct", "setpoint_w"}


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
    connect_timer: Bound | None
