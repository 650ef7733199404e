"""Inverter and battery physics from EPRI OpenDER (IEEE 1547-2018 DER model); the only importer of opender.

Each class wraps one OpenDER DER object and exposes the few inputs a SunSpec device maps to it:
available DC power (PV) or power demand (battery), the active power limit, permit service (cease to
energize when off), and the enter-service delay and ramp. OpenDER supplies the dynamics: the limit is
reached along a ramp whose full-scale time is the response time (`AP_RT`), a battery's demand ramps over
`NP_BESS_P_RAMP_TIME`, SoC integrates the power, and a device re-entering service waits its delay then
ramps.

OpenDER quirks handled here:
- The time step `DER.t_s` is a class attribute shared by every DER object in the process: it is set
  once, below, and each `step()` advances one fixed step of that length.
- opender logs through the module-level `logging.warning(...)`, which installs a root stderr handler
  (`basicConfig`) on first use and, for a battery at its SoC limit, warns on every step. Its modules
  are pointed at a named "opender" logger instead, quiet below ERROR.
- A trip (permit service off) resets OpenDER's limit ramp to 1 pu, so on re-entering service with a
  limit in force the output can overshoot the limit for up to one response time before the limit
  ramps back down. That is the model's behaviour and is left as is.
"""

from __future__ import annotations

import logging
import math

import opender.bess_specifc.soc as _od_soc
import opender.common_file_format.common_file_format as _od_cff
import opender.common_file_format.common_file_format_BESS as _od_cff_bess
import opender.op_cond_proc as _od_input
from opender import DER, DER_BESS, DER_PV

STEP_S = 0.1
DER.t_s = STEP_S

_LOG = logging.getLogger("opender")
_LOG.setLevel(logging.ERROR)
for _module in (_od_soc, _od_cff, _od_cff_bess, _od_input):
    _module.logging = _LOG  # type: ignore[attr-defined]  # only .warning/.error/.info are used there

V_NOM_LL = 480.0  # nominal line-to-line voltage of the simulated three-phase site
F_NOM = 60.0  # Ontario
_Q_RATIO = 0.44  # IEEE 1547 category B: reactive capability of 44 % of the VA rating


def _nameplate(rated_kw: float) -> dict[str, float | str]:
    w = rated_kw * 1000.0
    return {
        "NP_VA_MAX": w,
        "NP_P_MAX": w,
        "NP_P_MAX_OVER_PF": w,
        "NP_P_MAX_UNDER_PF": w,
        "NP_Q_MAX_INJ": _Q_RATIO * w,
        "NP_Q_MAX_ABS": _Q_RATIO * w,
        "NP_AC_V_NOM": V_NOM_LL,
        "NP_V_DC": 1.5 * V_NOM_LL * math.sqrt(2),  # above the AC peak, as OpenDER checks
        "ES_RANDOMIZED_DELAY": 0.0,
    }


class _DerPhysics:
    """What PV and battery share: limit, permit service, enter service, outputs."""

    def __init__(self, der: DER, es_delay_s: float, es_ramp_s: float) -> None:
        self._der = der
        self.set_enter_service(es_delay_s, es_ramp_s)
        der.update_der_input(v_pu=1.0, f=F_NOM)

    def set_limit(self, pu: float | None) -> None:
        """Active power limit in per unit of the rating; None disables the limit function."""
        f = self._der.der_file
        f.AP_LIMIT_ENABLE = pu is not None
        if pu is not None:
            f.AP_LIMIT = min(max(pu, 0.0), 1.0)

    def set_permit_service(self, permit: bool) -> None:
        """IEEE 1547 permit service: off means cease to energize (0 W) at once."""
        self._der.der_file.ES_PERMIT_SERVICE = permit

    def set_enter_service(self, delay_s: float, ramp_s: float) -> None:
        f = self._der.der_file
        f.ES_DELAY = delay_s
        f.ES_RAMP_RATE = ramp_s  # OpenDER's name; it is the ramp *time* in seconds

    def step(self) -> None:
        self._der.run()

    @property
    def p_kw(self) -> float:
        return float(self._der.p_out_kw or 0.0)

    @property
    def q_kvar(self) -> float:
        return float(self._der.q_out_kvar or 0.0)

    @property
    def status(self) -> str:
        """'on', 'off' (tripped, ceased to energize) or 'starting' (entering service)."""
        s = self._der.der_status
        if s == "Trip":
            return "off"
        if s == "Entering Service":
            return "starting"
        return "on"


class InverterPhysics(_DerPhysics):
    """A PV inverter: output follows available DC power, capped by the limit."""

    def __init__(self, rated_kw: float, response_time_s: float, es_delay_s: float, es_ramp_s: float) -> None:
        der = DER_PV(**_nameplate(rated_kw), AP_RT=response_time_s)
        super().__init__(der, es_delay_s, es_ramp_s)
        self.set_available_kw(0.0)

    def set_available_kw(self, kw: float) -> None:
        self._der.update_der_input(p_dc_kw=max(kw, 0.0))


class BatteryPhysics(_DerPhysics):
    """A battery: output follows the demand (positive = discharge) within rating, ramp and SoC limits."""

    def __init__(
        self,
        rated_kw: float,
        capacity_kwh: float,
        soc_pct: float,
        soc_min_pct: float,
        soc_max_pct: float,
        response_time_s: float,
        es_delay_s: float,
        es_ramp_s: float,
    ) -> None:
        w = rated_kw * 1000.0
        der = DER_BESS(
            **_nameplate(rated_kw),
            NP_P_MAX_CHARGE=w,
            NP_APPARENT_POWER_CHARGE_MAX=w,
            NP_BESS_CAPACITY=capacity_kwh * 1000.0,
            NP_BESS_SOC_MIN=soc_min_pct / 100.0,
            NP_BESS_SOC_MAX=soc_max_pct / 100.0,
            SOC_INIT=soc_pct / 100.0,
            NP_BESS_P_RAMP_TIME=response_time_s,
            AP_RT=response_time_s,
        )
        super().__init__(der, es_delay_s, es_ramp_s)
        self.set_demand_kw(0.0)

    def set_demand_kw(self, kw: float) -> None:
        self._der.update_der_input(p_dem_kw=kw)

    @property
    def soc_pct(self) -> float:
        return float(self._der.bess_soc) * 100.0


class LightInverterPhysics:
    """A PV inverter without OpenDER, for simulating a thousand devices on one box (benchmarks).

    The same interface and the same registers as `InverterPhysics`; the output approaches
    min(available, limit) with a first-order lag whose 90 % time is the response time, and permit service
    off drops it to 0 at once. Roughly a hundred times cheaper a step than OpenDER.
    """

    def __init__(self, rated_kw: float, response_time_s: float, es_delay_s: float, es_ramp_s: float) -> None:
        self._rated_kw = rated_kw
        # the fraction of the remaining gap closed per step, so that 90 % is reached in the response time
        self._alpha = 1.0 - 0.1 ** (STEP_S / max(response_time_s, STEP_S))
        self._available_kw = 0.0
        self._limit_pu: float | None = None
        self._permit = True
        self._p_kw = 0.0

    def set_available_kw(self, kw: float) -> None:
        self._available_kw = max(kw, 0.0)

    def set_limit(self, pu: float | None) -> None:
        self._limit_pu = None if pu is None else min(max(pu, 0.0), 1.0)

    def set_permit_service(self, permit: bool) -> None:
        self._permit = permit

    def set_enter_service(self, delay_s: float, ramp_s: float) -> None:
        """Enter-service timing is not modelled in the light physics."""

    def step(self) -> None:
        if not self._permit:
            self._p_kw = 0.0
            return
        cap = self._rated_kw if self._limit_pu is None else self._limit_pu * self._rated_kw
        self._p_kw += self._alpha * (min(self._available_kw, cap) - self._p_kw)

    @property
    def p_kw(self) -> float:
        return self._p_kw

    @property
    def q_kvar(self) -> float:
        return 0.0

    @property
    def status(self) -> str:
        return "on" if self._permit else "off"


class PhysicsOutputs:
    """What a simulated DER shows of its physics: output, reactive power, whether it energizes."""

    physics: InverterPhysics | LightInverterPhysics | BatteryPhysics

    @property
    def p_kw(self) -> float:
        return self.physics.p_kw

    @property
    def q_kvar(self) -> float:
        return self.physics.q_kvar

    @property
    def connected(self) -> bool:
        return self.physics.status != "off"
