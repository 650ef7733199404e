"""A simulated PV inverter: IEEE 1547-2018 SunSpec models (1, 701-704, 715) or the legacy 1x/12x set.

Physics (OpenDER): the available power is `irradiance_pu × rated_kw`; the output follows it, capped by
the active power limit and reached along OpenDER's response-time ramp; with permit service off the
inverter ceases to energize at once, and when permitted again it waits the enter-service delay and
ramps up over the enter-service ramp time.

Controls, read from the register map every step:
- ieee1547: 704 `WMaxLimPctEna`+`WMaxLimPct` (% of 702 `WMax`) and `WSetEna`+`WSetMod`+`WSet`/`WSetPct`
  (for PV a fixed-W setpoint caps the output); 703 `ES` (permit service) and 715 `OpCtl` STOP/START
  (and ENTER/EXIT_STANDBY) both gate output; 703 `ESDlyTms`/`ESRmpTms`/`ESRndTms` set the re-entry.
- legacy: 123 `WMaxLim_Ena`+`WMaxLimPct` (% of 121 `WMax`) and 123 `Conn`.
Stuck (fault): the controls last read stay in force, whatever the map says after.
Reversion: 704 `WMaxLimPctRvrtTms` and `WSetRvrtTms` (back to the `*Rvrt` values, `*RvrtRem` counting
down); 123 `WMaxLimPct_RvrtTms` (limit disabled) and `Conn_RvrtTms` (back to connected).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from gateway.config import DeviceConfig
from gateway.south.sunspec_models import Value, to_raw
from simulators.der_models import (
    ES_DELAY_S,
    ES_RAMP_S,
    FIXED_W,
    HZ_SF,
    INV_OFF,
    INV_RUNNING,
    INV_SLEEPING,
    INV_STARTING,
    INV_THROTTLED,
    MAX_W,
    Q_RATIO,
    V_NOM_LN,
    V_SF,
    WSET_MOD_WATTS,
    AcState,
    Scale,
    ac_controls_model,
    ac_controls_reversions,
    capacity_model,
    measure_ac_model,
    publish_ac,
    publish_power,
)
from simulators.device import (
    DISABLED,
    ENABLED,
    Reversion,
    SunSpecDevice,
    common_model,
    power_factor,
    put_balanced,
)
from simulators.physics import F_NOM, STEP_S, V_NOM_LL, InverterPhysics, LightInverterPhysics, PhysicsOutputs

TMP_SF = -1
TMP_CAB_C = 35.0
MEASUREMENT_REFRESH_S = 0.25  # how often a moving output reaches the registers (real inverters: 0.2–1 s)
DC_V = 720.0  # PV string voltage reported on the legacy model's DC points
LEGACY_LIM_SF = -1  # 123 WMaxLimPct in 0.1 % (704 uses 0.01 %)
SECONDS_1970_TO_2000 = 946_684_800  # model 122 `Tms` counts from 2000-01-01 UTC
SLEEP_BELOW_KW = 0.01

# 122 StActCtl bits, 122 PVConn bits
ST_ACT_FIXED_W = 1 << 0
PV_CONNECTED, PV_AVAILABLE, PV_OPERATING = 1 << 0, 1 << 1, 1 << 2
# 715 OpCtl
OPCTL_STOP, OPCTL_START, OPCTL_ENTER_STANDBY, OPCTL_EXIT_STANDBY = 0, 1, 2, 3
# 103 St for each 701 InvSt
LEGACY_ST = {INV_OFF: 1, INV_SLEEPING: 2, INV_STARTING: 3, INV_RUNNING: 4, INV_THROTTLED: 5}
DER_TYPE_PV = 4


@dataclass(frozen=True)
class Controls:
    """What the controller asked for, as read from the map."""

    cap_kw: float | None  # the active power cap from limits and setpoints; None when none is enabled
    sources: int  # ThrotSrc bits of the enabled controls
    permit: bool
    es_delay_s: float
    es_ramp_s: float


class PvInverter(PhysicsOutputs, SunSpecDevice):
    kind = "pv"

    def __init__(self, cfg: DeviceConfig, irradiance_pu: float) -> None:
        self.rated_kw = cfg.sim.rated_kw
        self.legacy = cfg.sim.variant == "legacy"
        self.measurement_models = (103, 122) if self.legacy else (701,)
        self.irradiance_pu = irradiance_pu
        self._scale = Scale.for_rating(self.rated_kw)
        if self.legacy:
            models = self._legacy_models(cfg)
            reversions = [
                Reversion(123, frozenset({"WMaxLimPct", "WMaxLim_Ena", "WMaxLimPct_RvrtTms"}),
                          "WMaxLimPct_RvrtTms", None, {"WMaxLim_Ena": DISABLED}),
                Reversion(123, frozenset({"Conn", "Conn_RvrtTms"}), "Conn_RvrtTms", None, {"Conn": 1}),
            ]
        else:
            models = self._ieee1547_models(cfg)
            reversions = ac_controls_reversions()
        super().__init__(cfg, models, reversions)
        physics = LightInverterPhysics if cfg.sim.physics == "light" else InverterPhysics
        self.physics = physics(self.rated_kw, cfg.sim.response_time_s, ES_DELAY_S, ES_RAMP_S)
        self._wh = 0.0
        self._controls_version = -1  # the map's controls_version when `_controls` was read
        self._published_state: tuple | None = None
        self._published_output: tuple[int, int] | None = None
        self._power_output: tuple[int, int] | None = None  # what the W and var registers hold
        self._published_at = -math.inf
        self.step(time.monotonic())  # publish the first measurements before anyone can read

    # --- register maps (raw values under the scale factors chosen here) ----------------------------

    def _ieee1547_models(self, cfg: DeviceConfig) -> dict[int, dict[str, Value | None]]:
        sc = self._scale
        return {
            1: common_model(cfg, f"PV-1547-{self.rated_kw:g}kW", "ieee1547"),
            701: measure_ac_model(sc, {"TmpCab": to_raw(TMP_CAB_C, TMP_SF), "Tmp_SF": TMP_SF}),
            702: capacity_model(sc, self.rated_kw, storage=False),
            703: {
                "ES": ENABLED, "ESVHi": to_raw(105.0, V_SF), "ESVLo": to_raw(91.7, V_SF),
                "ESHzHi": to_raw(60.1, HZ_SF), "ESHzLo": to_raw(59.5, HZ_SF), "ESDlyTms": ES_DELAY_S,
                "ESRndTms": 0, "ESRmpTms": ES_RAMP_S, "V_SF": V_SF, "Hz_SF": HZ_SF,
            },
            704: ac_controls_model(),
            715: {"LocRemCtl": 0, "DERHb": 0, "ControllerHb": 0, "AlarmReset": 0, "OpCtl": OPCTL_START},
        }

    def _legacy_models(self, cfg: DeviceConfig) -> dict[int, dict[str, Value | None]]:
        sc = self._scale
        w = self.rated_kw * 1000.0
        q = Q_RATIO * w
        measured = ("A", "AphA", "AphB", "AphC", "W", "VA", "VAr", "PF", "WH", "DCA", "DCW", "Evt1", "Evt2")
        # a stiff grid and a steady string: voltages and frequency are set here once, at nominal
        nominal = {
            **dict.fromkeys(("PPVphAB", "PPVphBC", "PPVphCA"), to_raw(V_NOM_LL, V_SF)),
            **dict.fromkeys(("PhVphA", "PhVphB", "PhVphC"), to_raw(V_NOM_LN, V_SF)),
            "Hz": to_raw(F_NOM, HZ_SF), "DCV": to_raw(DC_V, V_SF),
        }
        return {
            1: common_model(cfg, f"PV-LEGACY-{self.rated_kw:g}kW", "legacy"),
            103: {
                **dict.fromkeys(measured, 0), **nominal, "TmpCab": to_raw(TMP_CAB_C, TMP_SF),
                "St": LEGACY_ST[INV_RUNNING],
                "A_SF": sc.a, "V_SF": V_SF, "W_SF": sc.w, "Hz_SF": HZ_SF, "VA_SF": sc.w, "VAr_SF": sc.w,
                "PF_SF": -1, "WH_SF": 0, "DCA_SF": sc.a, "DCV_SF": V_SF, "DCW_SF": sc.w, "Tmp_SF": TMP_SF,
            },
            120: {
                "DERTyp": DER_TYPE_PV, "WRtg": to_raw(w, sc.w), "VARtg": to_raw(w, sc.w),
                "VArRtgQ1": to_raw(q, sc.w), "VArRtgQ2": to_raw(q, sc.w), "VArRtgQ3": to_raw(-q, sc.w),
                "VArRtgQ4": to_raw(-q, sc.w), "ARtg": to_raw(w / V_NOM_LN, sc.a),
                "WRtg_SF": sc.w, "VARtg_SF": sc.w, "VArRtg_SF": sc.w, "ARtg_SF": sc.a,
            },
            121: {
                "WMax": to_raw(w, sc.w), "VRef": to_raw(V_NOM_LL, V_SF), "VMax": to_raw(1.1 * V_NOM_LL, V_SF),
                "VMin": to_raw(0.88 * V_NOM_LL, V_SF), "VAMax": to_raw(w, sc.w), "VArMaxQ1": to_raw(q, sc.w),
                "VArMaxQ2": to_raw(q, sc.w), "VArMaxQ3": to_raw(-q, sc.w), "VArMaxQ4": to_raw(-q, sc.w),
                "ECPNomHz": to_raw(F_NOM, HZ_SF),
                "WMax_SF": sc.w, "VRef_SF": V_SF, "VMinMax_SF": V_SF, "VAMax_SF": sc.w, "VArMax_SF": sc.w,
                "ECPNomHz_SF": HZ_SF,
            },
            122: {
                "PVConn": 0, "ECPConn": 1, "ActWh": 0, "WAval": 0, "WAval_SF": sc.w, "StSetLimMsk": 0,
                "StActCtl": 0, "TmSrc": "RTC", "Tms": 0, "RtSt": 0,
            },
            123: {
                "Conn_RvrtTms": 0, "Conn": 1, "WMaxLimPct": to_raw(100.0, LEGACY_LIM_SF),
                "WMaxLimPct_RvrtTms": 0, "WMaxLim_Ena": DISABLED, "WMaxLimPct_SF": LEGACY_LIM_SF,
            },
        }

    # --- controls -----------------------------------------------------------------------------------

    def read_controls(self) -> Controls:
        m = self.map
        caps: list[float] = []
        sources = 0
        if self.legacy:
            wmax_kw = (m.eng(121, "WMax") or 0.0) / 1000.0
            if m.get(123, "WMaxLim_Ena") == ENABLED:
                caps.append((m.eng(123, "WMaxLimPct") or 0.0) / 100.0 * wmax_kw)
                sources |= MAX_W
            permit = m.get(123, "Conn") == 1
            es_delay, es_ramp = float(ES_DELAY_S), float(ES_RAMP_S)
        else:
            wmax_kw = (m.eng(702, "WMax") or 0.0) / 1000.0
            if m.get(704, "WMaxLimPctEna") == ENABLED:
                caps.append((m.eng(704, "WMaxLimPct") or 0.0) / 100.0 * wmax_kw)
                sources |= MAX_W
            if m.get(704, "WSetEna") == ENABLED:
                if m.get(704, "WSetMod") == WSET_MOD_WATTS:
                    caps.append((m.eng(704, "WSet") or 0.0) / 1000.0)
                else:
                    caps.append((m.eng(704, "WSetPct") or 0.0) / 100.0 * wmax_kw)
                sources |= FIXED_W
            permit = m.get(703, "ES") == ENABLED and m.get(715, "OpCtl") in (OPCTL_START, OPCTL_EXIT_STANDBY)
            # OpenDER draws its own random delay; a fixed one keeps runs repeatable: add the maximum.
            es_delay = float(m.get(703, "ESDlyTms") or 0) + float(m.get(703, "ESRndTms") or 0)
            es_ramp = float(m.get(703, "ESRmpTms") or 0)
        if wmax_kw < self.rated_kw * 0.999:  # WMax below the rating is itself a ceiling on output
            caps.append(wmax_kw)
        cap = None if not caps else max(0.0, min(caps))
        return Controls(cap, sources, permit, es_delay, es_ramp)

    def _hold_controls(self) -> None:
        self._controls, self._controls_version = self.read_controls(), self.map.controls_version

    # --- physics ------------------------------------------------------------------------------------

    def step(self, now: float) -> None:
        super().step(now)
        if self._controls_version != self.map.controls_version and not self.stuck:
            self._hold_controls()
        ctl = self._controls
        ph = self.physics
        ph.set_available_kw(self.irradiance_pu * self.rated_kw)
        ph.set_limit(None if ctl.cap_kw is None else ctl.cap_kw / self.rated_kw)
        ph.set_permit_service(ctl.permit)
        ph.set_enter_service(ctl.es_delay_s, ctl.es_ramp_s)
        ph.step()
        self._wh += max(ph.p_kw, 0.0) * 1000.0 * STEP_S / 3600.0
        # Publishing the ~30 measurement points is most of a step's cost. A change of state or of the
        # controls in force shows at once; a moving output updates W and var every step (the gateway
        # sets the site against the meter with them, and the meter moves every step) and the rest every
        # MEASUREMENT_REFRESH_S; in steady state only the counters move on, each second.
        state = (ph.status, ctl)
        output = (round(ph.p_kw * 1000.0), round(ph.q_kvar * 1000.0))
        since = now - self._published_at
        moved = output != self._published_output and since >= MEASUREMENT_REFRESH_S
        if state != self._published_state or moved:
            self._publish(now, ctl)
            self._published_state, self._published_output, self._published_at = state, output, now
            self._power_output = output
        elif output != self._power_output:
            self._publish_power()
            self._power_output = output
        elif since >= 1.0:
            self._publish_counters(now)
            self._published_at = now

    def _inv_state(self, ctl: Controls) -> int:
        ph = self.physics
        if ph.status == "off":
            return INV_OFF
        if ph.status == "starting":
            return INV_STARTING
        available = self.irradiance_pu * self.rated_kw
        if available < SLEEP_BELOW_KW:
            return INV_SLEEPING
        if ctl.cap_kw is not None and ctl.cap_kw < min(available, self.rated_kw):
            return INV_THROTTLED
        return INV_RUNNING

    def _publish(self, now: float, ctl: Controls) -> None:
        m = self.map
        p, q = self.physics.p_kw * 1000.0, self.physics.q_kvar * 1000.0
        inv = self._inv_state(ctl)
        if self.legacy:
            s = math.hypot(p, q)
            m.put_eng(103, "W", p)
            m.put_eng(103, "VA", s)
            m.put_eng(103, "VAr", q)
            m.put_eng(103, "PF", power_factor(p, q) * 100.0)
            put_balanced(m, 103, "A", ("AphA", "AphB", "AphC"), s / V_NOM_LN)
            m.put_eng(103, "DCW", p)
            m.put_eng(103, "DCA", p / DC_V)
            m.put(103, "St", LEGACY_ST[inv])
            on = inv != INV_OFF
            m.put(122, "PVConn", (PV_CONNECTED | PV_OPERATING if on else 0) | PV_AVAILABLE)
            m.put_eng(122, "WAval", min(self.irradiance_pu, 1.0) * self.rated_kw * 1000.0)
            m.put(122, "StActCtl", ST_ACT_FIXED_W if ctl.sources else 0)
        else:
            wmax_kw = (m.eng(702, "WMax") or 0.0) / 1000.0
            cap_pct = 100.0 if ctl.cap_kw is None or wmax_kw <= 0 else 100.0 * ctl.cap_kw / wmax_kw
            publish_ac(m, AcState(p, q, self._wh, 0.0, inv, cap_pct, ctl.sources))
        self._publish_counters(now)

    def _publish_power(self) -> None:
        """Active and reactive power alone (their per-phase parts too)."""
        m, p, q = self.map, self.physics.p_kw * 1000.0, self.physics.q_kvar * 1000.0
        if self.legacy:
            m.put_eng(103, "W", p)
            m.put_eng(103, "VAr", q)
        else:
            publish_power(m, p, q)

    def _publish_counters(self, now: float) -> None:
        """The points that move on in steady state: energy, heartbeat, clock."""
        m = self.map
        if self.legacy:
            m.put(103, "WH", int(self._wh) & 0xFFFFFFFF)
            m.put(122, "ActWh", int(self._wh))
            m.put(122, "Tms", int(time.time()) - SECONDS_1970_TO_2000)
        else:
            m.put(701, "TotWhInj", int(self._wh))
            m.put(715, "DERHb", self.heartbeat(now) & 0xFFFFFFFF)

    # --- state --------------------------------------------------------------------------------------

    @property
    def active_limit_pct(self) -> float | None:
        cap = self._controls.cap_kw
        return None if cap is None else 100.0 * cap / self.rated_kw
