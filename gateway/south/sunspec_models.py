"""SunSpec model definitions and point codec, taken from pysunspec2 (the only module that imports it).

pysunspec2 ships the official SunSpec JSON models and the per-type codecs (scale factors, "not
implemented" sentinels). We use those instead of typing register offsets by hand; the gateway's driver
and the simulators both build on this module, so a register image and its reader can never disagree.

Offsets are in registers from the model's first register (the `ID` point is at offset 0, `L` at 1).
Non-repeating groups (704's `PFWInj`, …) are flattened as `Group.Point`; repeating groups (curves,
battery strings) are left out: the gateway does not drive them.

The codec takes whatever a device sends: registers that do not decode, scale factors outside SunSpec's
-10…10 (`sunssf`), values a point's type cannot hold and numbers that are not finite raise `PointError`,
and nothing else, so a driver can tell the user which point of which device is wrong.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property

import sunspec2.device as ss_device
import sunspec2.mb as ss_mb
import sunspec2.mdef as ss_mdef

SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF
BASE_ADDRESSES = (40000, 0, 50000)
SF_RANGE = range(-10, 11)  # sunssf: "-10 … 10" (SunSpec information model); beyond it a value is garbage

Value = int | float | str
Decoder = Callable[[Sequence[int]], Value | None]


class PointError(ValueError):
    """A point value, its registers or its scale factor cannot be used; the message says why."""


@dataclass(frozen=True)
class PointDef:
    name: str
    offset: int
    size: int
    type: str
    sf: str | int | None  # the name of the scale-factor point, a fixed exponent, or none
    access: str  # "R" or "RW"
    units: str | None
    symbols: dict[str, int]

    @cached_property
    def decode(self) -> Decoder:
        """pysunspec2's decoding of this point from exactly its registers, looked up once (see `decode`)."""
        return _decoder(self.type, self.size)


@dataclass(frozen=True)
class ModelDef:
    id: int
    name: str
    length: int  # L: registers after the two-register header
    points: dict[str, PointDef]

    def __getitem__(self, name: str) -> PointDef:
        return self.points[name]


def _collect(group: ss_device.Group, prefix: str, out: dict[str, PointDef]) -> None:
    for name, p in group.points.items():
        pd = p.pdef
        sf = pd.get(ss_mdef.SF)
        if isinstance(sf, str) and sf.lstrip("-").isdigit():
            sf = int(sf)
        symbols = {s[ss_mdef.NAME]: int(s[ss_mdef.VALUE]) for s in pd.get(ss_mdef.SYMBOLS, [])}
        out[prefix + name] = PointDef(
            name=prefix + name,
            offset=p.offset,
            size=p.len,
            type=pd[ss_mdef.TYPE],
            sf=sf,
            access=pd.get(ss_mdef.ACCESS, "R"),
            units=pd.get(ss_mdef.UNITS),
            symbols=symbols,
        )
    for gname, sub in group.groups.items():
        if not isinstance(sub, list):  # repeating groups are lists: not driven, left out
            _collect(sub, f"{prefix}{gname}.", out)


@cache
def model_def(model_id: int) -> ModelDef:
    """The layout of one SunSpec model (fixed part), from pysunspec2's official definition."""
    m = ss_device.Model(model_id=model_id)
    if m.error_info and not m.points:
        raise KeyError(f"SunSpec model {model_id}: {m.error_info.strip()}")
    points: dict[str, PointDef] = {}
    _collect(m, "", points)
    return ModelDef(id=model_id, name=m.gname or str(model_id), length=m.len - 2, points=points)


@cache
def _registers(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def _to_regs(data: bytes) -> list[int]:
    return list(_registers(len(data) // 2).unpack(data))


@cache
def _decoder(point_type: str, size: int) -> Decoder:
    """pysunspec2's decoding of one point type, bound once: a reading decodes a dozen points and
    looking the codec up for each was most of a reading's cost."""
    info = ss_mb.point_type_info[point_type]
    pack, data_to, is_impl = _registers(size).pack, info.data_to, info.is_impl

    def _decode(regs: Sequence[int]) -> Value | None:
        try:
            value = data_to(pack(*regs))
        except (struct.error, ValueError) as err:  # a register outside 0…0xFFFF, a string not UTF-8
            raise PointError(f"registers {list(regs)} do not decode as {point_type}: {err}") from None
        return value if is_impl(value) else None

    return _decode


def decode(point: PointDef, regs: Sequence[int]) -> Value | None:
    """The raw value of a point from its registers, or None when the device marks it not implemented."""
    return point.decode(regs[: point.size])


def encode(point: PointDef, value: Value | None) -> list[int]:
    """The registers of a raw point value; None gives SunSpec's not-implemented sentinel."""
    if value is None:
        return _to_regs(ss_mb.create_unimpl_value(point.type, point.size * 2))
    info = ss_mb.point_type_info[point.type]
    try:
        if point.type == ss_mdef.TYPE_STRING:
            return _to_regs(info.to_data(str(value), point.size * 2))
        return _to_regs(info.to_data(value))
    except (struct.error, TypeError, ValueError, OverflowError):
        raise PointError(f"{value!r} does not fit {point.type}") from None


def check_sf(sf: int) -> int:
    """`sf` if it is a SunSpec scale factor (-10…10), else PointError."""
    if sf not in SF_RANGE:
        raise PointError(f"outside SunSpec's scale factors {SF_RANGE[0]}…{SF_RANGE[-1]}")
    return sf


def apply_sf(raw: Value | None, sf: int | None) -> float | None:
    """Engineering value = raw × 10^sf; None when either side is not implemented.

    PointError for a scale factor outside -10…10, a string, or a value that is not finite (float32 ±inf).
    """
    if raw is None or sf is None:
        return None
    if isinstance(raw, str):
        raise PointError(f"{raw!r} is a string, not a number")
    value = float(raw) * 10.0 ** check_sf(sf)
    if not math.isfinite(value):
        raise PointError(f"{raw} is not a finite number")
    return value


def to_raw(value: float, sf: int) -> int:
    """The raw integer to write for an engineering value under scale factor `sf` (PointError for a
    scale factor outside -10…10 or a value that is not finite)."""
    if not math.isfinite(value):
        raise PointError(f"cannot scale {value}: not a finite number")
    return round(value / 10.0 ** check_sf(sf))
