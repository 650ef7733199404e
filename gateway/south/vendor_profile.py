"""Vendor device profiles: `device_profiles/vendor_<name>.toml`, register maps of devices without SunSpec.

A profile is data: every register the driver uses (address, table, type, word order, scale, access,
valid range), which register gives each canonical quantity (`[read]`), and how the active power command
(`[power]`) and connect/disconnect (`[connect]`) are written. The models below document every field
(README, "Field devices", has an overview); the shipped profiles are commented examples that cite the
vendor document each register comes from.

A profile is checked when it is loaded, so a mistake is reported with the file, the line and the field
rather than found on site: unknown types or fields, overlapping registers, scales that are not a sane
power of ten, ranges the type cannot hold, references to registers that do not exist or cannot be
written. The driver (`register_device.py`) and the simulator (`simulators/vendor.py`) both encode and
decode registers with the functions below, so a simulated device can never disagree with its profile.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
import tomllib
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.south.profile import PROFILES_DIR, ProfileError

RegType = Literal["int16", "uint16", "int32", "uint32", "float32", "string"]
WordOrder = Literal["big", "little"]
TableName = Literal["holding", "input"]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
Raw = int | float | str

SIZES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
RAW_RANGES = {
    "int16": (-0x8000, 0x7FFF),
    "uint16": (0, 0xFFFF),
    "int32": (-0x80000000, 0x7FFFFFFF),
    "uint32": (0, 0xFFFFFFFF),
    "float32": (-3.4e38, 3.4e38),
}
_STRUCT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
# `register` is the word the files use; pydantic's BaseModel has an attribute of that name, so the
# models call it `reg` and read it through an alias (errors still say `register`).

# A fixed scale is a power of ten within these bounds (µ… to M…): anything else is a typo in the file.
SCALE_EXPONENTS = range(-6, 7)
# A scale register holds a SunSpec-style exponent (value = raw × 10^exponent); beyond ±10 it is garbage.
SF_EXPONENT_LIMIT = 10


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Register(_Strict):
    """One point of the device's map. Engineering values are in SI units (W, var, V, Hz, %, s)."""

    address: Annotated[int, Field(ge=0, le=0xFFFF)]
    table: TableName = "holding"
    type: RegType
    length: Annotated[int, Field(ge=1, le=125)] | None = Field(
        default=None, description="string: its size in registers (two characters each)")
    word_order: WordOrder | None = Field(default=None, description="32-bit types; default: the profile's")
    scale: float | None = Field(default=None, description="engineering value = raw × scale")
    scale_register: Name | None = Field(
        default=None, description="engineering value = raw × 10^(that register's value), as SunSpec's SFs")
    access: Literal["r", "rw", "w"] = "r"
    write_function: Literal[6, 16] = 16
    min: float | None = Field(default=None, description="valid range of writes, in engineering units")
    max: float | None = None
    unit: str = ""
    description: str = ""

    @property
    def size(self) -> int:
        return self.length if self.type == "string" and self.length else SIZES.get(self.type, 1)

    @property
    def readable(self) -> bool:
        return self.access != "w"

    @property
    def writable(self) -> bool:
        return self.access != "r"


class Status(_Strict):
    """A boolean read from a register: true when its raw value is one of `true_if`."""

    reg: Name = Field(alias="register")
    true_if: list[int] = Field(min_length=1)


class ReadMap(_Strict):
    """Canonical quantity → register name. `p_w` is required; the rest as the device has them."""

    p_w: Name
    q_var: Name | None = None
    hz: Name | None = None
    v: Name | None = None
    v_nominal: Name | None = None
    rated_w: Name | None = None
    available_w: Name | None = None
    max_charge_w: Name | None = None
    max_discharge_w: Name | None = None
    soc_pct: Name | None = None
    soc_min_pct: Name | None = None
    soc_max_pct: Name | None = None
    connected: Status | None = None


class Switch(_Strict):
    reg: Name = Field(alias="register")
    on: int
    off: int


class PowerControl(_Strict):
    """The active power command: a limit in % of rated power or in W (PV), a signed W setpoint
    (battery). Written as the value, then the reversion timer, then the enable."""

    unit: Literal["pct_of_rated", "W"]
    reg: Name = Field(alias="register")
    enable: Switch | None = None
    reversion_timer: Name | None = Field(
        default=None, description="seconds after the last write at which the device drops the command")
    reverts_to_no_limit: bool = Field(
        default=False, description="a PV limit the device drops when its timer runs out (full output; 0 = "
        "keep the command): the timer is written as 0 whenever full output would exceed the site's "
        "safe_limit_pct or the LDC's share")


class Command(_Strict):
    reg: Name = Field(alias="register")
    value: int


class ConnectControl(_Strict):
    """Connect and disconnect: one register with two values, or two command registers."""

    on: Command
    off: Command


class VendorProfile(_Strict):
    kind: Literal["pv", "battery", "meter"]
    description: str = ""
    positive_w: Literal["injection", "absorption"] = Field(
        description="what a positive W means on this device: power into the grid side (generation, "
        "discharge, export) or out of it (consumption, charge, import)")
    word_order: WordOrder = "big"
    max_read_gap: Annotated[int, Field(ge=0, le=100)] = Field(
        default=0, description="unmapped registers a read may span to join two requests (0: none)")
    registers: dict[Name, Register] = Field(min_length=1)
    read: ReadMap
    power: PowerControl | None = None
    connect: ConnectControl | None = None
    name: str = ""  # set by the loader: the profile's name (vendor_<name>.toml)

    @property
    def sign(self) -> int:
        """+1 when the device's positive W is ours (into the grid side), else -1."""
        return 1 if self.positive_w == "injection" else -1

    def order(self, reg: Register) -> WordOrder:
        return reg.word_order or self.word_order


# --- codec ---------------------------------------------------------------------------------------


def decode(reg: Register, regs: list[int], word_order: WordOrder) -> Raw:
    """The raw value of a register from its words (Modbus bytes are big-endian within a word)."""
    if reg.type == "string":
        data = struct.pack(f">{reg.size}H", *regs[: reg.size])
        return data.split(b"\0", 1)[0].decode("ascii", "replace").rstrip()
    words = list(regs[: reg.size])
    if word_order == "little":
        words.reverse()
    return struct.unpack(_STRUCT[reg.type], struct.pack(f">{len(words)}H", *words))[0]


def encode(reg: Register, raw: Raw, word_order: WordOrder) -> tuple[int, ...]:
    """The words of a raw value (ValueError if the type cannot hold it)."""
    if reg.type == "string":
        data = str(raw).encode("ascii")[: reg.size * 2].ljust(reg.size * 2, b"\0")
        return struct.unpack(f">{reg.size}H", data)
    try:
        data = struct.pack(_STRUCT[reg.type], raw)
    except struct.error:
        raise ValueError(f"{raw} does not fit {reg.type}") from None
    words = list(struct.unpack(f">{len(data) // 2}H", data))
    if word_order == "little":
        words.reverse()
    return tuple(words)


def scale_of(reg: Register, exponent: int | None = None) -> float | None:
    """The multiplier of a register: its fixed scale, or 10^exponent read from its scale register
    (None when that register reads as not implemented)."""
    if reg.scale_register is not None:
        return None if exponent is None else 10.0**exponent
    return 1.0 if reg.scale is None else reg.scale


def to_raw(reg: Register, value: float, scale: float) -> int | float:
    """The raw value to write for an engineering value; integers are rounded."""
    raw = value / scale
    return raw if reg.type == "float32" else round(raw)


# --- loading -------------------------------------------------------------------------------------


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Line number (1-based) of every key and table header of a TOML text, by key path.

    tomllib gives no positions, so this small scanner follows `[table]` and `[[array]]` headers, dotted
    keys and one level of inline tables, which is all a profile uses. Quoted keys are unquoted;
    lines inside multi-line strings or arrays are skipped.
    """
    out: dict[tuple[str | int, ...], int] = {}
    counts: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    depth = 0  # open brackets of a multi-line array
    in_string = False
    key_re = re.compile(r'\s*((?:[A-Za-z0-9_-]+|"[^"]*")(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"))*)\s*=')
    for number, line in enumerate(text.splitlines(), start=1):
        if line.count('"""') % 2:
            in_string = not in_string
            continue
        if in_string:
            continue
        stripped = _strip_comment(line).strip()
        if depth:
            depth += stripped.count("[") - stripped.count("]")
            continue
        if stripped.startswith("[["):
            path = _split_key(stripped[2:stripped.index("]]")])
            counts[path] = counts.get(path, -1) + 1
            table = (*path, counts[path])
            out.setdefault(table, number)
            continue
        if stripped.startswith("["):
            table = _split_key(stripped[1:stripped.index("]")])
            out.setdefault(table, number)
            continue
        match = key_re.match(stripped)
        if not match:
            continue
        path = (*table, *_split_key(match.group(1)))
        out.setdefault(path, number)
        value = stripped[match.end():].strip()
        if value.startswith("{"):
            for inner in re.finditer(r'([A-Za-z0-9_-]+|"[^"]*")\s*=', value):
                out.setdefault((*path, inner.group(1).strip('"')), number)
        elif value.startswith("["):
            depth = value.count("[") - value.count("]")
    return out


def _strip_comment(line: str) -> str:
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i]
    return line


def _split_key(key: str) -> tuple[str, ...]:
    return tuple(part.strip().strip('"') for part in re.findall(r'"[^"]*"|[^.]+', key))


def _line_of(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    """The line of the longest prefix of `loc` that the file spells out."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _check(p: VendorProfile) -> list[tuple[tuple[str | int, ...], str]]:
    """What the schema cannot say: cross-references, overlaps, scales and ranges. (loc, message)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    regs = p.registers
    for name, r in regs.items():
        loc: tuple[str | int, ...] = ("registers", name)
        if r.type == "string" and r.length is None:
            problems.append(((*loc, "type"), "a string needs its length in registers (length = n)"))
        if r.type != "string" and r.length is not None:
            problems.append(((*loc, "length"), f"only strings take a length, not {r.type}"))
        if r.address + r.size > 0x10000:
            problems.append(((*loc, "address"), f"{r.address} + {r.size} registers runs past 65535"))
        if r.table == "input" and r.writable:
            problems.append(((*loc, "access"), "input registers (FC4) are read-only: access = 'r'"))
        if r.write_function == 6 and r.size != 1 and r.writable:
            problems.append(((*loc, "write_function"), f"FC6 writes one register; {r.type} needs {r.size}"))
        if r.scale is not None and r.scale_register is not None:
            problems.append(((*loc, "scale"), "give either scale or scale_register, not both"))
        if r.scale is not None and (r.scale <= 0 or not _is_power_of_ten(r.scale)):
            problems.append(((*loc, "scale"), f"{r.scale:g} is out of range: a scale is a power of ten "
                             f"from 1e{SCALE_EXPONENTS[0]} to 1e{SCALE_EXPONENTS[-1]}"))
        if (r.scale is not None or r.scale_register is not None) and r.type == "string":
            problems.append(((*loc, "scale"), "a string has no scale"))
        if r.scale_register is not None:
            sf = regs.get(r.scale_register)
            if sf is None:
                problems.append(((*loc, "scale_register"), f"no register {r.scale_register!r}"))
            elif sf.type != "int16" or sf.scale_register is not None or sf.scale not in (None, 1):
                problems.append(((*loc, "scale_register"),
                                 f"{r.scale_register!r} must be an unscaled int16 (a power-of-ten exponent)"))
        if (r.min is not None or r.max is not None) and not r.writable:
            field = "min" if r.min is not None else "max"
            problems.append(((*loc, field), "a range is for writable registers"))
        if r.min is not None and r.max is not None and r.min > r.max:
            problems.append(((*loc, "min"), f"min {r.min:g} is above max {r.max:g}"))
        if r.type in RAW_RANGES and r.scale_register is None:
            lo, hi = RAW_RANGES[r.type]
            scale = r.scale or 1.0
            for field in ("min", "max"):
                bound = getattr(r, field)
                if bound is not None and not lo <= bound / scale <= hi:
                    problems.append(((*loc, field), f"{bound:g} does not fit {r.type} at scale {scale:g} "
                                     f"({lo * scale:g} to {hi * scale:g})"))
    problems += _overlaps(p)
    for field, ref in p.read:
        if field == "connected" and ref is not None:
            problems += _ref(p, ("read", "connected", "register"), ref.reg, numeric=True)
        elif ref is not None:
            problems += _ref(p, ("read", field), ref, numeric=True)
    if p.power is not None:
        problems += _ref(p, ("power", "register"), p.power.reg, numeric=True, write=True)
        if p.power.enable is not None:
            problems += _ref(p, ("power", "enable", "register"), p.power.enable.reg, write=True)
            problems += _fits(p, ("power", "enable"), p.power.enable.reg,
                              [p.power.enable.on, p.power.enable.off])
        if p.power.reversion_timer is not None:
            problems += _ref(p, ("power", "reversion_timer"), p.power.reversion_timer,
                             numeric=True, write=True)
        elif p.power.reverts_to_no_limit:
            problems.append((("power", "reverts_to_no_limit"), "needs a reversion_timer to write as 0"))
    if p.connect is not None:
        for which in ("on", "off"):
            cmd: Command = getattr(p.connect, which)
            problems += _ref(p, ("connect", which, "register"), cmd.reg, write=True)
            problems += _fits(p, ("connect", which, "value"), cmd.reg, [cmd.value])
        if (p.connect.on.reg, p.connect.on.value) == (p.connect.off.reg, p.connect.off.value):
            problems.append((("connect", "off"), "connect.on and connect.off write the same value"))
    if p.kind == "meter" and (p.power or p.connect):
        where = ("power",) if p.power else ("connect",)
        problems.append((where, "a meter profile takes no power or connect"))
    if p.kind != "meter":
        if p.power is None:
            problems.append((("kind",), f"a {p.kind} profile needs a [power] section"))
        if p.read.rated_w is None:
            problems.append((("read",), f"a {p.kind} profile needs read.rated_w (commands refer to it)"))
    if p.kind == "battery" and p.power is not None and p.power.unit != "W":
        problems.append((("power", "unit"), "a battery takes a signed setpoint: unit = 'W'"))
    return problems


def _is_power_of_ten(x: float) -> bool:
    exponent = round(math.log10(x))
    return exponent in SCALE_EXPONENTS and math.isclose(x, 10.0**exponent, rel_tol=1e-9)


def _overlaps(p: VendorProfile) -> list[tuple[tuple[str | int, ...], str]]:
    problems = []
    spans = sorted((r.table, r.address, r.address + r.size, name) for name, r in p.registers.items())
    for (t1, a1, e1, n1), (t2, a2, _, n2) in itertools.pairwise(spans):
        if t1 == t2 and a2 < e1:
            problems.append((("registers", n2, "address"),
                             f"{t2} register {a2} overlaps {n1!r} ({t1} {a1} to {e1 - 1})"))
    return problems


def _ref(p: VendorProfile, loc: tuple[str | int, ...], name: str, *, numeric: bool = False,
         write: bool = False) -> list[tuple[tuple[str | int, ...], str]]:
    reg = p.registers.get(name)
    if reg is None:
        return [(loc, f"no register {name!r} in [registers] (have {', '.join(sorted(p.registers))})")]
    if numeric and reg.type == "string":
        return [(loc, f"{name!r} is a string, not a number")]
    if write and not reg.writable:
        return [(loc, f"{name!r} is read-only (access = 'r')")]
    if not write and not reg.readable:
        return [(loc, f"{name!r} is write-only (access = 'w')")]
    return []


def _fits(p: VendorProfile, loc: tuple[str | int, ...], name: str, values: list[int]
          ) -> list[tuple[tuple[str | int, ...], str]]:
    reg = p.registers.get(name)
    if reg is None or reg.type not in RAW_RANGES:
        return []
    lo, hi = RAW_RANGES[reg.type]
    return [(loc, f"{v} does not fit {name!r} ({reg.type})") for v in values if not lo <= v <= hi]


def parse_vendor_profile(text: str, path: Path | str = "<profile>", name: str = "") -> VendorProfile:
    """A validated profile from TOML text; ProfileError names the file, line and field of each problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{path}: not valid TOML: {err}") from None
    lines = _key_lines(text)
    problems: list[tuple[tuple[str | int, ...], str]] = []
    try:
        profile = VendorProfile.model_validate({**data, "name": name})
    except ValidationError as err:
        for e in err.errors():
            msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            if e["type"] == "missing":
                msg = "required field is missing"
            problems.append((tuple(e["loc"]), msg))
    else:
        problems = _check(profile)
    if problems:
        out = [f"{path}: {len(problems)} problem(s) in the vendor profile"]
        for loc, msg in problems:
            line = _line_of(loc, lines)
            where = f"{path}:{line}" if line else str(path)
            field = ".".join(str(x) for x in loc) or "(top level)"
            out.append(f"  - {where}: {field}: {msg}")
        raise ProfileError("\n".join(out))
    return profile


def profile_path(name: str, directory: Path = PROFILES_DIR) -> Path:
    return directory / f"vendor_{name}.toml"


@cache
def load_vendor_profile(name: str, kind: str, directory: Path = PROFILES_DIR) -> VendorProfile:
    """The profile `<directory>/vendor_<name>.toml` for a device of `kind`."""
    path = profile_path(name, directory)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        have = sorted(p.stem.removeprefix("vendor_") for p in directory.glob("vendor_*.toml"))
        raise ProfileError(f"{path}: no such vendor profile (profile {name!r}; have {have})") from None
    profile = parse_vendor_profile(text, path, name)
    if profile.kind != kind:
        raise ProfileError(f"{path}: kind: the profile is for {profile.kind!r}, the device is {kind!r}")
    return profile
