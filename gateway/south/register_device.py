"""Driver of a Modbus device without SunSpec, mapped by a vendor profile (`vendor_profile.py`).

There is nothing to discover: the profile says where every register is. Connecting reads every
register the driver uses once, so a profile that does not match the device (exception 2 on a mapped
address) is reported as a fault at once, naming the profile. Reads go in as few requests as the
profile allows (`max_read_gap`: vendor maps have holes that devices answer with exception 2), per
table (FC3 holding, FC4 input), and include the scale registers and the readable command registers,
so a scale that changes is never applied to the wrong value and a command the device lost is seen.

Values are checked as the SunSpec driver checks them (`plausible`): a float32 that is NaN or infinite,
a scale register beyond ±10, a value the device cannot physically have is unusable; the quantity is
then not reported, and a reading without a usable active power fails, naming the register and its raw
value.

Commands, refreshes, re-applying after a reconnect, offline handling and the write journal are
`BusDevice`'s, shared with the SunSpec driver. A command outside a register's valid range is clamped
to it (the profile's `min`/`max`), never written as given.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

from gateway.config import DeviceConfig
from gateway.south.bus_device import BusDevice, PointWrite, Quantities, RegisterImage, coalesce
from gateway.south.device import DeviceFault, Reading, Setpoint
from gateway.south.modbus_client import Table
from gateway.south.plausible import MAX_W, Sample, pick
from gateway.south.vendor_profile import (
    SF_EXPONENT_LIMIT,
    Register,
    VendorProfile,
    decode,
    encode,
    load_vendor_profile,
    scale_of,
    to_raw,
)

_NOT_IMPLEMENTED_SF = -0x8000  # a scale register read as SunSpec's int16 "not implemented"


class RegisterDevice(BusDevice):
    """A PV inverter, battery or meter whose registers a vendor profile describes."""

    _profile: VendorProfile

    @classmethod
    def _load_profile(cls, cfg: DeviceConfig, directory: Path) -> VendorProfile:
        """`protocol = "modbus"`, `profile = "<name>"`: device_profiles/vendor_<name>.toml."""
        return load_vendor_profile(cfg.profile, cfg.kind, directory)

    @property
    def profile(self) -> VendorProfile:
        return self._profile

    @cached_property
    def _spans(self) -> dict[Table, list[tuple[int, int]]]:
        """(start, count) of the requests of one read, by table."""
        gap = self._profile.max_read_gap
        return {table: coalesce(ranges, gap) for table, ranges in self._ranges().items()}

    def _ranges(self) -> dict[Table, list[tuple[int, int]]]:
        """[start, end) of every register a read needs, by table."""
        p = self._profile
        names = {ref for field, ref in p.read if ref is not None and field != "connected"}
        if p.read.connected is not None:
            names.add(p.read.connected.reg)
        if p.power is not None:  # read back the command in force (and the scales its writes need)
            names |= {p.power.reg, *(s.reg for s in [p.power.enable] if s)}
            names |= {t for t in [p.power.reversion_timer] if t}
        if self._connect_state is not None:  # and the connect state it was given
            names.add(self._connect_state)
        names |= {sf for n in set(names) if (sf := p.registers[n].scale_register) is not None}
        ranges: dict[Table, list[tuple[int, int]]] = {"holding": [], "input": []}
        for name in names:
            reg = p.registers[name]
            if reg.readable:
                ranges[reg.table].append((reg.address, reg.address + reg.size))
        return ranges

    # --- BusDevice hooks ----------------------------------------------------------------------------

    async def _discover(self) -> None:
        # Nothing to find; the first read proves that the device answers and holds the profile's map.
        try:
            await self._read_image()
        except DeviceFault as err:  # exception 2 on a mapped register, most likely
            cause = str(err).removeprefix(f"{self.id}: ")
            hint = f"does the device match profile {self._cfg.profile!r}?"
            raise DeviceFault(self.id, f"{cause} ({hint})") from err
        # after that read, which opened the connection: the next read must not take the connection for
        # a new one (and discover and re-apply everything again)
        self._discovered()

    async def _read_image(self) -> RegisterImage:
        started = time.monotonic()
        with self._translated("read"):
            read = {
                table: [(start, await self._unit.read(start, count, table)) for start, count in requests]
                for table, requests in self._spans.items()
            }
        self._image = RegisterImage(read["holding"], read["input"], started)
        return self._image

    def _reading(self, image: RegisterImage) -> Reading:
        p = self._profile
        samples = {field: [self._sample(ref, image)] for field, ref in p.read
                   if ref is not None and field != "connected"}
        samples.update(self._read_back(image))
        connected = None
        if p.read.connected is not None:
            raw = self._raw(p.read.connected.reg, image)
            connected = raw in p.read.connected.true_if
        return self._reading_from(Quantities(**self._checked(samples), connected=connected), image)

    def _read_back(self, image: RegisterImage) -> dict[str, list[Sample]]:
        """The command in force, if the device lets us read it: `limit_pct` (in %) or `setpoint_w` (in
        device W); nothing when no command is in force."""
        pc = self._profile.power
        if pc is None or not self._profile.registers[pc.reg].readable:
            return {}
        enable = pc.enable
        if (enable is not None and self._profile.registers[enable.reg].readable
                and self._raw(enable.reg, image) != enable.on):
            return {}
        sample = self._sample(pc.reg, image)
        if pc.unit == "W":
            return {"setpoint_w": [sample]}
        # Without an enable, a limit at 100 % is the device's "no limit" (its power-on value).
        no_limit = pc.enable is None and sample.value is not None and sample.value >= 100
        return {} if no_limit else {"limit_pct": [sample]}

    def _power_plan(self, cmd: Setpoint) -> tuple[PointWrite, ...]:
        pc, image = self._profile.power, self._image
        assert pc is not None and image is not None
        rated_w = self._profile.read.rated_w
        rated = pick("rated_w", [self._sample(rated_w, image)], MAX_W)[0] if rated_w else None
        writes = [self._point_write(pc.reg, self._power_target(cmd, pc.unit, rated), image, held=True)]
        if pc.reversion_timer is not None:
            assert rated  # _power_target refuses a device without one
            # A device that drops the limit when its timer runs out keeps this command instead (0 = no
            # timeout) unless full output is within what it may do once the gateway has stopped.
            keep = pc.reverts_to_no_limit and cmd.held_on_timeout(self._cfg.safe_limit_pct, rated)
            writes.append(self._point_write(pc.reversion_timer, 0 if keep else self._reversion_s, image))
        if pc.enable is not None:
            writes.append(self._raw_write(pc.enable.reg, pc.enable.on, held=True))
        return tuple(writes)

    def _connect_plan(self, cmd: Setpoint) -> tuple[PointWrite, ...]:
        cc = self._profile.connect
        if cc is None:
            return ()
        target = cc.on if cmd.connect else cc.off
        # Read back only a register that holds the state (one register, two values); two command registers
        # (start / stop) are momentary, and read back nothing of it.
        return (self._raw_write(target.reg, target.value, held=self._connect_state is not None),)

    @cached_property
    def _connect_state(self) -> str | None:
        """The register that holds the connect state, when connect and disconnect write one register."""
        cc = self._profile.connect
        return cc.on.reg if cc is not None and cc.on.reg == cc.off.reg else None

    # --- registers ----------------------------------------------------------------------------------

    def _raw(self, name: str, image: RegisterImage) -> int | float | str:
        reg = self._profile.registers[name]
        return decode(reg, image.regs(reg.address, reg.size, reg.table), self._profile.order(reg))

    def _scale(self, reg: Register, image: RegisterImage) -> float | None:
        """The multiplier of a register; None when its scale register is not implemented (SunSpec's
        int16 sentinel) or beyond a sane exponent."""
        exponent = None
        if reg.scale_register is not None:
            raw = self._raw(reg.scale_register, image)
            exponent = int(raw) if isinstance(raw, int) and abs(raw) <= SF_EXPONENT_LIMIT else None
        return scale_of(reg, exponent)

    def _sample(self, name: str, image: RegisterImage) -> Sample:
        """A numeric register as read, unusable or not (see `plausible.Sample`)."""
        reg, label = self._profile.registers[name], self._label(name)
        raw = self._raw(name, image)
        if isinstance(raw, str):
            return Sample(label, repr(raw), None, "a string, not a number")
        scale = self._scale(reg, image)
        if scale is not None:
            return Sample(label, raw, float(raw) * scale)
        assert reg.scale_register is not None  # a register without one has a fixed scale
        exponent = self._raw(reg.scale_register, image)
        where = f"{raw} under {self._label(reg.scale_register)} = {exponent}"
        if exponent == _NOT_IMPLEMENTED_SF:
            return Sample(label, where, None)
        return Sample(label, where, None, f"a scale exponent beyond ±{SF_EXPONENT_LIMIT}")

    def _point_write(
        self, name: str, value: float, image: RegisterImage, *, held: bool = False
    ) -> PointWrite:
        """A write of an engineering value, clamped to the register's valid range and scaled."""
        reg = self._profile.registers[name]
        if reg.min is not None:
            value = max(reg.min, value)
        if reg.max is not None:
            value = min(reg.max, value)
        scale = self._scale(reg, image)
        if scale is None:
            raise DeviceFault(self.id, f"cannot write {self._label(name)}: its scale register is unusable")
        return self._raw_write(name, to_raw(reg, value, scale), held=held and reg.readable)

    def _raw_write(self, name: str, raw: int | float, *, held: bool = False) -> PointWrite:
        reg = self._profile.registers[name]
        try:
            regs = encode(reg, raw, self._profile.order(reg))
        except ValueError as err:
            raise DeviceFault(self.id, f"cannot write {self._label(name)}: {err}") from None
        recorded = raw if isinstance(raw, int) else repr(raw)  # the journal keeps ints and strings
        return PointWrite(self._label(name), reg.address, recorded, regs, held=held and reg.readable,
                          single=reg.write_function == 6)

    def _label(self, name: str) -> str:
        return f"{self._cfg.profile}.{name}"
