"""A device's SunSpec register image, laid out from the official model definitions.

The layout comes from `gateway.south.sunspec_models` (pysunspec2's JSON models), never from hand-typed
offsets: "SunS" at the base address, then each model's `ID`, `L` and body back to back, then the end
model (0xFFFF, L=0).

A point the device does not give a value reads as SunSpec's not-implemented sentinel. A register is
writable only if it belongs to a point that is RW in the model *and* that the device implements; a
write to any other register of the map (ID, L, scale factors, measurements, unimplemented controls) is
ignored, as a well-behaved device does, rather than applied.

Quirks of real devices can be switched on (`map_quirks`, from the site file's `sim.quirks`): the map at
base 0 or 50000 instead of 40000; scale factors served as "not implemented" (0x8000) on the wire while
the device keeps using them inside (seen on devices that do not report reactive power or voltage
properly); no end model, so that reading past the last model is answered with exception 2.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from gateway.south.sunspec_models import (
    END_MODEL_ID,
    SUNS_MARKER,
    PointDef,
    Value,
    apply_sf,
    decode,
    encode,
    model_def,
    to_raw,
)

DEFAULT_BASE = 40000
# The scale factors the "sf_not_implemented" quirk serves as 0x8000: those of voltage and reactive
# power, wherever a model has them. Power, limits and ratings keep theirs, so the device stays usable.
NOT_IMPLEMENTED_SFS = frozenset({"V_SF", "Var_SF", "VAr_SF", "VAR_SF"})
_SF_NOT_IMPLEMENTED = 0x8000


def map_quirks(quirks: Collection[str]) -> dict[str, Any]:
    """`SunSpecMap` keyword arguments for the site file's `sim.quirks`."""
    base = 0 if "base_0" in quirks else 50000 if "base_50000" in quirks else DEFAULT_BASE
    return {
        "base": base,
        "masked_sfs": NOT_IMPLEMENTED_SFS if "sf_not_implemented" in quirks else frozenset(),
        "end_model": "no_end_model" not in quirks,
    }


class SunSpecMap:
    """The register image of one SunSpec device, with point-level access by (model id, point name)."""

    def __init__(
        self,
        values: Mapping[int, Mapping[str, Value | None]],
        *,
        locked: Collection[tuple[int, str]] = (),
        base: int = DEFAULT_BASE,
        masked_sfs: Collection[str] = (),
        end_model: bool = True,
    ) -> None:
        """`values`: per model id (in map order, model 1 first), the raw value of each implemented point.

        Points not listed read as not implemented. Raw values are register values before scaling;
        use `put_eng` to store an engineering value under the point's scale factor. `locked` points
        are RW in the model but read-only on this device. `masked_sfs`: scale-factor point names served
        as not implemented (0x8000) on the wire; `end_model=False`: the map ends without the end model.
        """
        if next(iter(values), None) != 1:
            raise ValueError("SunSpec requires the common model (1) first")
        self.base = base
        self._points: dict[tuple[int, str], tuple[int, PointDef]] = {}
        # Scale factors are read-only on the wire and fixed by the device: decode each once.
        self._sf_cache: dict[tuple[int, str], int | None] = {}
        # Bumped whenever a control (an RW point) or a scale factor may have changed, by a Modbus write
        # or by the device itself (reversion, reboot): devices re-read their controls only then.
        self.controls_version = 0
        regs: list[int] = list(SUNS_MARKER)
        for mid in values:
            mdef = model_def(mid)
            address = base + len(regs)
            body = [0] * (mdef.length + 2)
            for name, p in mdef.points.items():
                self._points[mid, name] = (address + p.offset, p)
                body[p.offset : p.offset + p.size] = encode(p, None)
            body[0:2] = [mid, mdef.length]
            regs.extend(body)
        regs.extend([END_MODEL_ID, 0])
        self.regs = regs
        self._end_model = end_model
        # Offsets (from base) served as 0x8000 whatever the map holds.
        self._masked = {
            address - base
            for (mid, name), (address, p) in self._points.items()
            if name in masked_sfs and p.type == "sunssf"
        }
        self._writable = bytearray(len(regs))
        for mid, points in values.items():
            for name, raw in points.items():
                if name in ("ID", "L"):
                    raise ValueError(f"model {mid}: ID and L are laid out from the model definition")
                address, p = self._lookup(mid, name)
                self.put(mid, name, raw)
                if raw is not None and p.access == "RW" and (mid, name) not in locked:
                    start = address - base
                    self._writable[start : start + p.size] = b"\x01" * p.size
        # the writable point each register belongs to (offset from base): a write finds what it touched
        self._writable_point: dict[int, tuple[int, str]] = {
            addr - base + i: key
            for key, (addr, p) in self._points.items()
            if self._writable[addr - base]
            for i in range(p.size)
        }

    @property
    def end(self) -> int:
        """One past the last register served (the end model included, unless the map has none)."""
        return self.base + len(self.regs) - (0 if self._end_model else 2)

    def _lookup(self, mid: int, name: str) -> tuple[int, PointDef]:
        try:
            return self._points[mid, name]
        except KeyError:
            raise KeyError(f"no point {name!r} in model {mid} of this map") from None

    def address(self, mid: int, name: str) -> int:
        return self._lookup(mid, name)[0]

    def point(self, mid: int, name: str) -> PointDef:
        return self._lookup(mid, name)[1]

    # --- raw access ---------------------------------------------------------------------------------

    def get(self, mid: int, name: str) -> Value | None:
        address, p = self._lookup(mid, name)
        start = address - self.base
        return decode(p, self.regs[start : start + p.size])

    def put(self, mid: int, name: str, raw: Value | None) -> None:
        address, p = self._lookup(mid, name)
        start = address - self.base
        self.regs[start : start + p.size] = encode(p, raw)
        if p.type == "sunssf":
            self._sf_cache.pop((mid, name), None)
        if p.access == "RW" or p.type == "sunssf":
            self.controls_version += 1

    # --- engineering values (scale factors applied) -------------------------------------------------

    def sf(self, mid: int, name: str) -> int | None:
        """The exponent of a point: 0 when unscaled, None when its scale factor is not implemented."""
        sf = self.point(mid, name).sf
        if sf is None:
            return 0
        if isinstance(sf, int):
            return sf
        key = (mid, sf)
        if key not in self._sf_cache:
            raw = self.get(mid, sf)
            self._sf_cache[key] = None if raw is None else int(raw)
        return self._sf_cache[key]

    def eng(self, mid: int, name: str) -> float | None:
        return apply_sf(self.get(mid, name), self.sf(mid, name))

    def raw_for(self, mid: int, name: str, value: float) -> int:
        """The raw value of an engineering value, scaled and clamped to what the point's type can hold."""
        sf = self.sf(mid, name)
        if sf is None:
            raise ValueError(f"model {mid} point {name}: its scale factor is not implemented")
        raw = to_raw(value, sf)
        lo, hi = _RANGES.get(self.point(mid, name).type, (raw, raw))
        return max(lo, min(hi, raw))

    def put_eng(self, mid: int, name: str, value: float | None) -> None:
        self.put(mid, name, None if value is None else self.raw_for(mid, name, value))

    # --- Modbus side --------------------------------------------------------------------------------

    def read(self, address: int, count: int) -> list[int]:
        start = address - self.base
        out = self.regs[start : start + count]
        for offset in self._masked:
            if start <= offset < start + count:
                out[offset - start] = _SF_NOT_IMPLEMENTED
        return out

    def write(self, address: int, values: Sequence[int]) -> tuple[list[int], set[tuple[int, str]]]:
        """Apply a Modbus write: only writable registers change; the rest keep their current value.

        Returns the registers as they now are (what the server stores) and the (model id, point name)
        of every writable point the request touched, so that the device can react (reversion timers).
        """
        start = address - self.base
        applied = [v if self._writable[start + i] else self.regs[start + i] for i, v in enumerate(values)]
        self.regs[start : start + len(applied)] = applied
        touched = {key for i in range(start, start + len(values)) if (key := self._writable_point.get(i))}
        if touched:
            self.controls_version += 1
        return applied, touched

    def points(self) -> Iterable[tuple[int, str, int, PointDef]]:
        """(model id, point name, address, definition) of every point of the map."""
        return ((mid, name, address, p) for (mid, name), (address, p) in self._points.items())

    def writable_points(self) -> Iterable[tuple[int, str]]:
        return (key for key, (addr, _) in self._points.items() if self._writable[addr - self.base])


# The raw range each scaled numeric type can hold without colliding with its not-implemented sentinel.
_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-0x7FFF, 0x7FFF),
    "uint16": (0, 0xFFFE),
    "int32": (-0x7FFFFFFF, 0x7FFFFFFF),
    "uint32": (0, 0xFFFFFFFE),
    "acc16": (0, 0xFFFF),
    "acc32": (0, 0xFFFFFFFF),
    "acc64": (0, 0xFFFFFFFFFFFFFFFF),
    "uint64": (0, 0xFFFFFFFFFFFFFFFE),
    "int64": (-0x7FFFFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF),
}


def sf_for(max_abs: float, *, signed: bool = True, floor: int = 0) -> int:
    """The smallest scale factor (≥ `floor`) under which ±max_abs fits a 16-bit point."""
    limit = 0x7FFF if signed else 0xFFFE
    sf = floor
    while abs(max_abs) / 10.0**sf > limit:
        sf += 1
    return sf
