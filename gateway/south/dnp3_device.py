"""DNP3 DER driver implementing `Device`: an opendnp3 master speaking the AN2018-001 / IEEE 1815.2 points
named by `device_profiles/<profile>_inverter.toml` (default `dnp3`).

Reads: an integrity poll when the link comes up and every `integrity_interval_s`, an event poll on every
other read; the reading is built from the last value of each point, so an unchanged point costs nothing
on the wire. A poll that gets no answer (response timeout, link down) raises DeviceOffline, and the
`Device` supervision takes over (offline, backoff, recovery); opendnp3 reconnects the TCP link by itself.

Values are checked as the Modbus drivers check them (`plausible`): an analog flagged off line, restarted,
over range, comms lost or failing its reference check is unusable, and so is a value that is not finite
or not physically possible; the quantity is then not reported, and a reading without a usable active
power fails, naming the point and its raw value.

Writes: the active power limit as AO85 (reversion timeout), AO88 (setpoint), BO17 ON; the connect
command as AO17 (its reversion timeout, 0) and BO5. What changed of each is written when the command
changes; both are refreshed every `REFRESH_FRACTION` × the reversion timeout, and written again in full
after the link re-opens or the device reports a restart (its settings may be gone), or when the
read-back (BI69 and AI149 for the limit, BI23 for the switch) no longer shows them (it reverted, or
another master wrote). Every point written is recorded through the `on_write` hook.

Reversion: AN2018 has a reversion timeout for each mode but no reversion value: when AO85 runs out
the device turns the limit mode off (full output), and when AO17 runs out the switch returns to its
default (closed). So AO85 is written as the timeout only while full output is within what the device
may do once the gateway has stopped (its site-file safe limit and the command's `revert_kw`, the LDC's
share); otherwise as 0 (no reversion), and the device keeps the gateway's last limit. AO17 is always 0:
an open switch stays open.
"""

from __future__ import annotations

import math
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import DeviceConfig
from gateway.dnp3.opendnp3_stack import AnalogCommand, BinaryCommand, Command, Dnp3Error, MasterStack
from gateway.south.backoff import Backoff
from gateway.south.device import (
    Device,
    DeviceFault,
    DeviceOffline,
    Reading,
    WriteHook,
    WritePurpose,
    WriteRecord,
    due_writes,
)
from gateway.south.plausible import MAX_W, Sample, pick
from gateway.south.profile import PROFILES_DIR, ROLE_OF_KIND, ProfileError
from gateway.south.sunspec_device import REFRESH_FRACTION

# IEEE 1815 analog quality flags: a value is good only ONLINE and without any of the others below
_ONLINE = 0x01
_BAD_FLAGS = {0x02: "RESTART", 0x04: "COMM_LOST", 0x20: "OVER_RANGE", 0x40: "REFERENCE_ERR"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Analog(_Strict):
    index: int = Field(ge=0, le=65535)
    scale: float = Field(gt=0)


class ReadPoints(_Strict):
    p_w: Analog
    q_var: Analog | None = None
    hz: Analog | None = None
    v: Analog | None = None
    v_nominal: Analog | None = None
    rated_w: Analog
    available_w: Analog | None = None
    limit_pct: Analog


class StatusPoints(_Strict):
    connected: int = Field(ge=0, le=65535)
    limit_enabled: int = Field(ge=0, le=65535)


class PowerPoints(_Strict):
    reversion_timer: int = Field(ge=0, le=65535)
    value: int = Field(ge=0, le=65535)
    value_scale: float = Field(gt=0)
    enable: int = Field(ge=0, le=65535)


class ConnectPoint(_Strict):
    point: int = Field(ge=0, le=65535)
    reversion_timer: int | None = Field(default=None, ge=0, le=65535, description="written as 0 first")


class Dnp3Profile(_Strict):
    kind: Literal["pv"]
    description: str = ""
    operate: Literal["direct", "select_before_operate"] = "direct"
    integrity_interval_s: float = Field(default=60.0, gt=0)
    read: ReadPoints
    status: StatusPoints
    power: PowerPoints
    connect: ConnectPoint


def load_dnp3_profile(name: str, kind: str, directory: Path = PROFILES_DIR) -> Dnp3Profile:
    path = directory / f"{name}_{ROLE_OF_KIND[kind]}.toml"
    try:
        return Dnp3Profile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such device profile (profile {name!r}, kind {kind!r})") from None
    except (tomllib.TOMLDecodeError, ValidationError) as err:
        raise ProfileError(f"{path}: {err}") from None


@dataclass(frozen=True)
class _Write:
    label: str  # "AO88", "BO17": how the audit log names the point
    command: Command

    @property
    def raw(self) -> int:
        c = self.command
        return round(c.value) if isinstance(c, AnalogCommand) else int(bool(c.on))


class Dnp3Device(Device):
    """A DER speaking DNP3 (AN2018 profile) behind the same interface as a SunSpec one."""

    def __init__(self, cfg: DeviceConfig, *, profile: Dnp3Profile, stale_after_s: float,
                 on_write: WriteHook | None = None, backoff: Backoff | None = None) -> None:
        super().__init__(cfg.id, cfg.kind, stale_after_s=stale_after_s, on_write=on_write, backoff=backoff)
        self._profile = profile
        self._master = MasterStack(name=cfg.id, host=cfg.host, port=cfg.port, address=cfg.master_address,
                                   outstation_address=cfg.outstation_address,
                                   response_timeout_s=cfg.timeout_s)
        self._safe_limit_pct = cfg.safe_limit_pct
        self._reversion_s = max(1, round(cfg.reversion_timeout_s))  # the timer point holds whole seconds
        self._refresh_s = self._reversion_s * REFRESH_FRACTION
        self._integrity_at = -math.inf
        self._polled_at = 0.0
        self._applied_power: tuple[_Write, ...] | None = None  # the limit's writes, as last applied
        self._applied_limit: int | None = None  # AO88 raw of them, as AI149 reads it back
        self._power_written_at = -math.inf
        self._applied_connect: tuple[_Write, ...] | None = None
        self._applied_switch: bool | None = None  # BO5 of them, as BI23 reads it back
        self._connect_written_at = -math.inf
        self._applied_generation = -1  # the link generation the command was last written in full on

    @classmethod
    def from_config(cls, cfg: DeviceConfig, *, stale_after_s: float, on_write: WriteHook | None = None,
                    profiles_dir: Path = PROFILES_DIR) -> Dnp3Device:
        profile = load_dnp3_profile(cfg.profile, cfg.kind, profiles_dir)
        return cls(cfg, profile=profile, stale_after_s=stale_after_s, on_write=on_write)

    # --- Device hooks -------------------------------------------------------------------------------

    async def _connect(self) -> None:
        self._master.start()
        await self._poll(integrity=True)
        self._applied_generation = self._master.generation

    async def _recover(self) -> None:
        await self._connect()
        await self._reapply()

    async def _read(self) -> Reading:
        started = time.monotonic()
        await self._poll(integrity=started - self._integrity_at >= self._profile.integrity_interval_s)
        if self._command is not None and (self._master.generation != self._applied_generation
                                          or self._lost_command(started)):
            await self._reapply()
        return self._reading()

    async def _write(self) -> None:
        await self._apply(force=False)

    async def _keep_alive(self) -> None:
        if self._command is not None:  # writes only when a refresh is due
            await self._apply(force=False)

    async def _close(self) -> None:
        self._master.stop()

    # --- reads --------------------------------------------------------------------------------------

    async def _poll(self, *, integrity: bool) -> None:
        try:
            await self._master.poll(integrity=integrity)
        except Dnp3Error as err:
            raise DeviceOffline(self.id, str(err)) from err
        self._polled_at = time.monotonic()
        if integrity:
            self._integrity_at = self._polled_at

    def _sample(self, point: Analog) -> Sample:
        """An analog input as last reported, unusable or not (see `plausible.Sample`)."""
        label, raw = f"AI{point.index}", self._master.analogs.get(point.index)
        if raw is None:
            return Sample(label, None, None)
        flags = self._master.analog_flags.get(point.index, _ONLINE)
        bad = [name for bit, name in _BAD_FLAGS.items() if flags & bit]
        if not flags & _ONLINE:
            bad.insert(0, "not ONLINE")
        if bad:
            return Sample(label, raw, None, f"flagged {', '.join(bad)}")
        return Sample(label, raw, raw * point.scale)

    def _value(self, field: str, point: Analog | None) -> float | None:
        """The usable value of one quantity (None if not reported or not usable), for commands."""
        return None if point is None else pick(field, [self._sample(point)], MAX_W)[0]

    def _reading(self) -> Reading:
        rd, st, bi = self._profile.read, self._profile.status, self._master.binaries
        points = {"p_w": rd.p_w, "q_var": rd.q_var, "hz": rd.hz, "v": rd.v, "v_nominal": rd.v_nominal,
                  "rated_w": rd.rated_w, "available_w": rd.available_w}
        if bi.get(st.limit_enabled):
            points["limit_pct"] = rd.limit_pct
        values = self._checked({f: [self._sample(p)] for f, p in points.items() if p is not None})
        p_w, rated_w, limit_pct = values["p_w"], values["rated_w"], values.get("limit_pct")
        assert p_w is not None  # _checked: no reading without it
        q_var, v, v_nom, available_w = (values.get(f) for f in ("q_var", "v", "v_nominal", "available_w"))
        return Reading(
            p_kw=p_w / 1000,
            q_kvar=None if q_var is None else q_var / 1000,
            v_pu=v / v_nom if v is not None and v_nom else None,
            hz=values.get("hz"),
            available_kw=None if available_w is None else available_w / 1000,
            max_charge_kw=0.0,
            rated_kw=None if rated_w is None else rated_w / 1000,
            soc_pct=None,
            connected=bi.get(st.connected),
            limit_pct=limit_pct,
            setpoint_kw=None if limit_pct is None or not rated_w else limit_pct * rated_w / 100 / 1000,
            at=self._polled_at,
        )

    def _lost_command(self, read_started: float) -> bool:
        """The read-back no longer shows the limit or the switch state last written (it reverted, or another
        master wrote); each judged only on a poll that started after it was written."""
        bi, st = self._master.binaries, self._profile.status
        if self._applied_limit is not None and self._power_written_at < read_started:
            held = self._master.analogs.get(self._profile.read.limit_pct.index)
            if not bi.get(st.limit_enabled) or held != self._applied_limit:
                return True
        return (self._applied_switch is not None and self._connect_written_at < read_started
                and bi.get(st.connected) != self._applied_switch)

    # --- writes -------------------------------------------------------------------------------------

    async def _reapply(self) -> None:
        if self._command is not None:
            await self._apply(force=True)
            self._applied_generation = self._master.generation

    async def _apply(self, *, force: bool) -> None:
        """Write what of `self._command` is not yet on the device, or is due for a refresh."""
        cmd = self._command
        assert cmd is not None
        rated = self._profile.read.rated_w
        rated_w = self._value("rated_w", rated)
        if not rated_w:
            raise DeviceFault(self.id, f"cannot command: the device reports no rated power (AI{rated.index})")
        pw, cc = self._profile.power, self._profile.connect
        raw = round(min(100.0, max(0.0, cmd.p_kw * 1000 / rated_w * 100)) * pw.value_scale)
        # No reversion value in AN2018: 0 = no timeout, the device keeps this limit, unless full output
        # (the limit mode off) is within what it may do once the gateway has stopped.
        timer = 0 if cmd.held_on_timeout(self._safe_limit_pct, rated_w) else self._reversion_s
        power = (_Write(f"AO{pw.reversion_timer}", AnalogCommand(pw.reversion_timer, timer)),
                 _Write(f"AO{pw.value}", AnalogCommand(pw.value, raw)),
                 _Write(f"BO{pw.enable}", BinaryCommand(pw.enable, True, "LATCH_ON")))
        code = "LATCH_ON" if cmd.connect else "LATCH_OFF"
        switch = _Write(f"BO{cc.point}", BinaryCommand(cc.point, cmd.connect, code))
        connect = (switch,) if cc.reversion_timer is None else (
            _Write(f"AO{cc.reversion_timer}", AnalogCommand(cc.reversion_timer, 0)), switch)
        now = time.monotonic()
        power_step = due_writes(power, self._applied_power, now - self._power_written_at, self._refresh_s,
                                force=force, purpose="setpoint")
        connect_step = due_writes(connect, self._applied_connect, now - self._connect_written_at,
                                  self._refresh_s, force=force, purpose="connect")
        # Cease to energize before anything else; energize only once the new limit is in place.
        order = [("power", power_step), ("connect", connect_step)]
        for what, step in order if cmd.connect else reversed(order):
            if step is None:
                continue
            if what == "power":
                self._applied_power = self._applied_limit = None  # until the whole sequence is through
                await self._operate(*step)
                self._applied_power, self._applied_limit = power, raw
                self._power_written_at = time.monotonic()
            else:
                self._applied_connect = self._applied_switch = None
                await self._operate(*step)
                self._applied_connect, self._applied_switch = connect, cmd.connect
                self._connect_written_at = time.monotonic()

    async def _operate(self, writes: list[_Write], purpose: WritePurpose) -> None:
        """Operate each point in order; every one is recorded, the first failure stops the sequence."""
        select_first = self._profile.operate == "select_before_operate"
        for w in writes:
            result = "ok"
            try:
                status = await self._master.operate(w.command, select_first=select_first)
                if status != "SUCCESS":
                    result = status
                    raise DeviceFault(self.id, f"{w.label} = {w.raw}: the device answered {status}")
            except Dnp3Error as err:
                result = str(err)
                raise DeviceOffline(self.id, f"{w.label} = {w.raw}: {err}") from err
            finally:
                address = w.command.index
                self._record(WriteRecord(self.id, w.label, address, w.raw, result, purpose, time.time()))
