"""SunSpec model definitions and point codec, taken from pysunspec2 (the only module that imports it).

pysunspec2 ships the official SunSpec JSON models and the per-type codecs (scale factors, "not
implemented" sentinels). We use those instead of typing register offsets by hand; the gateway's driver
and the simulators both build on this module, so a register image and its reader can never disagree.

Offsets are in registers from the model's first register (the `ID` point is at offset 0, `L` at 1).
Non-repeating groups (704's `PFWInj`, …) are flattened as `Group.Point`; repeating groups (curves,
battery strings) are left out: the gateway does not drive them.
"""

from __future__ import annotations

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

Value = int | float | str
Decoder = Callable[[Sequence[int]], Value | None]


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
        value = data_to(pack(*regs))
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
    if point.type == ss_mdef.TYPE_STRING:
        return _to_regs(info.to_data(str(value), point.size * 2))
    return _to_regs(info.to_data(value))


def apply_sf(raw: Value | None, sf: int | None) -> float | None:
    """Engineering value = raw × 10^sf; None when either side is not implemented."""
    if raw is None or sf is None:
        return None
    return float(raw) * 10.0**sf


def to_raw(value: float, sf: int) -> int:
    """The raw integer to write for an engineering value under scale factor `sf`."""
    return round(value / 10.0**sf)
