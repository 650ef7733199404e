"""The simulated PCC meter: SunSpec models 1 and 203 (three-phase wye meter, integer + scale factors).

Sign convention: **positive = export to the grid**. The meter reads the site's net power at the point
of common coupling, W = Σ simulated DER output (positive = generating/discharging) − site load; W < 0
means the site imports. VAR follows the same convention (positive = reactive power exported).
`TotWhExp`/`TotWhImp` accumulate the exported and imported energy separately.

The site simulator computes the net power each step and hands it to `update()`; the meter itself has no
controls (its writable points: none).
"""

from __future__ import annotations

import math
import time

from gateway.config import DeviceConfig
from simulators.der_models import HZ_SF, V_NOM_LN, V_SF
from simulators.device import SunSpecDevice, common_model, put_balanced
from simulators.modbus_server import FAULT_MODES
from simulators.physics import F_NOM, STEP_S, V_NOM_LL
from simulators.sunspec_map import sf_for

PCT_PF_SF = -1  # 203 PF is in percent: 0.1 % steps
PHASES = ("phA", "phB", "phC")


class PccMeter(SunSpecDevice):
    kind = "meter"
    fault_modes = (*FAULT_MODES, "nan", "bad_sf", "garbage")  # no stuck: it takes no commands
    measurement_models = (203,)

    def __init__(self, cfg: DeviceConfig, max_kw: float) -> None:
        """`max_kw`: the largest |power| the site can see at the PCC; it sets the scale factors."""
        w_sf = sf_for(max_kw * 1000.0 * 1.2)
        a_sf = sf_for(max_kw * 1000.0 / V_NOM_LN * 1.2, floor=-1)
        measured = ("A", "PhV", "PPV", "Hz", "W", "VA", "VAR", "PF", "TotWhExp", "TotWhImp", "Evt")
        per_phase = [f"{q}{ph}" for q in ("A", "W", "VA", "VAR", "PF") for ph in PHASES]
        per_phase += [f"PhV{ph}" for ph in PHASES] + ["PhVphAB", "PhVphBC", "PhVphCA"]
        per_phase += [f"TotWh{d}Ph{x}" for d in ("Exp", "Imp") for x in "ABC"]
        models = {
            1: common_model(cfg, "METER-PCC-3P", "wye"),
            203: {
                **dict.fromkeys(measured, 0), **dict.fromkeys(per_phase, 0),
                "A_SF": a_sf, "V_SF": V_SF, "Hz_SF": HZ_SF, "W_SF": w_sf, "VA_SF": w_sf, "VAR_SF": w_sf,
                "PF_SF": PCT_PF_SF, "TotWh_SF": 0,
            },
        }
        super().__init__(cfg, models)
        self._p_kw = 0.0
        self._q_kvar = 0.0
        self._wh_exp = 0.0
        self._wh_imp = 0.0
        self.update(0.0, 0.0)
        self.step(time.monotonic())

    def update(self, p_kw: float, q_kvar: float) -> None:
        """The net power at the PCC (positive = export), as computed by the site for this step."""
        self._p_kw = p_kw
        self._q_kvar = q_kvar

    def step(self, now: float) -> None:
        super().step(now)
        p, q = self._p_kw * 1000.0, self._q_kvar * 1000.0
        energy_wh = p * STEP_S / 3600.0
        if energy_wh >= 0:
            self._wh_exp += energy_wh
        else:
            self._wh_imp -= energy_wh
        m = self.map
        s = math.hypot(p, q)
        pf_pct = 100.0 if s < 1e-3 else 100.0 * p / s
        put_balanced(m, 203, "W", [f"W{ph}" for ph in PHASES], p)
        put_balanced(m, 203, "VA", [f"VA{ph}" for ph in PHASES], s)
        put_balanced(m, 203, "VAR", [f"VAR{ph}" for ph in PHASES], q)
        put_balanced(m, 203, "A", [f"A{ph}" for ph in PHASES], s / V_NOM_LN)
        for name in ("PF", *(f"PF{ph}" for ph in PHASES)):
            m.put_eng(203, name, pf_pct)
        for name in ("PhV", *(f"PhV{ph}" for ph in PHASES)):
            m.put_eng(203, name, V_NOM_LN)
        for name in ("PPV", "PhVphAB", "PhVphBC", "PhVphCA"):
            m.put_eng(203, name, V_NOM_LL)
        m.put_eng(203, "Hz", F_NOM)
        put_balanced(m, 203, "TotWhExp", ["TotWhExpPhA", "TotWhExpPhB", "TotWhExpPhC"], self._wh_exp)
        put_balanced(m, 203, "TotWhImp", ["TotWhImpPhA", "TotWhImpPhB", "TotWhImpPhC"], self._wh_imp)

    @property
    def p_kw(self) -> float:
        return self._p_kw

    @property
    def q_kvar(self) -> float:
        return self._q_kvar
