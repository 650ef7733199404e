"""Model contents shared by the PV inverter and the battery: the IEEE 1547 models 701, 702 and 704.

Values here are raw register values under the scale factors chosen per device (`Scale`); the layouts
come from the SunSpec definitions via `SunSpecMap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.south.sunspec_models import Value, to_raw
from simulators.device import DISABLED, Reversion, power_factor, put_balanced
from simulators.physics import F_NOM, V_NOM_LL
from simulators.sunspec_map import SunSpecMap, sf_for

V_NOM_LN = V_NOM_LL / math.sqrt(3)
V_SF = -1
HZ_SF = -2
PF_SF = -2
PCT_SF = -2  # 704 WMaxLimPct / WSetPct in 0.01 %
Q_RATIO = 0.44  # reactive capability in per unit of the VA rating (IEEE 1547 category B)
# Enter service after permit: far shorter than IEEE 1547's 300 s so that a demo recovers while one
# watches; a controller can write others (703 on the inverter).
ES_DELAY_S = 2
ES_RAMP_S = 5

# 701 ThrotSrc / 702 CtrlModes bits
MAX_W, FIXED_W = 1 << 0, 1 << 1
# 701 enums
THREE_PHASE = 2
ST_OFF, ST_ON = 0, 1
INV_OFF, INV_SLEEPING, INV_STARTING, INV_RUNNING, INV_THROTTLED = 0, 1, 2, 3, 4
GRID_FOLLOWING = 1 << 0
# 702 NorOpCatRtg CAT_B, AbnOpCatRtg CAT_3
CAT_B, CAT_3 = 1, 2
# 704 WSetMod
WSET_MOD_PCT, WSET_MOD_WATTS = 0, 1


@dataclass(frozen=True)
class Scale:
    """The scale factors of a device's power and current points, chosen so its rating fits int16."""

    w: int
    a: int

    @classmethod
    def for_rating(cls, rated_kw: float) -> Scale:
        max_a = rated_kw * 1000.0 / V_NOM_LN * 1.2
        return cls(w=sf_for(rated_kw * 1000.0), a=sf_for(max_a, floor=-1))


def measure_ac_model(sc: Scale, extra: dict[str, Value | None] | None = None) -> dict[str, Value | None]:
    """701: power, current and states filled in by `publish_ac`; the simulated grid is stiff, so voltage
    and frequency sit at nominal and are set here once."""
    v_ll, v_ln, hz = to_raw(V_NOM_LL, V_SF), to_raw(V_NOM_LN, V_SF), to_raw(F_NOM, HZ_SF)
    return {
        "ACType": THREE_PHASE, "St": ST_ON, "InvSt": INV_RUNNING, "ConnSt": 1, "Alrm": 0,
        "DERMode": GRID_FOLLOWING, "W": 0, "VA": 0, "Var": 0, "PF": 0, "A": 0, "Hz": hz,
        "TotWhInj": 0, "TotWhAbs": 0,
        **{f"{x}L{i}": 0 for x in ("W", "VA", "Var", "PF", "A") for i in (1, 2, 3)},
        **dict.fromkeys(("LLV", "VL1L2", "VL2L3", "VL3L1"), v_ll),
        **dict.fromkeys(("LNV", "VL1", "VL2", "VL3"), v_ln),
        "ThrotPct": 100, "ThrotSrc": 0,
        "A_SF": sc.a, "V_SF": V_SF, "Hz_SF": HZ_SF, "W_SF": sc.w, "PF_SF": PF_SF, "VA_SF": sc.w,
        "Var_SF": sc.w, "TotWh_SF": 0,
        **(extra or {}),
    }


def capacity_model(sc: Scale, rated_kw: float, *, storage: bool) -> dict[str, Value | None]:
    """702: ratings (`*Rtg`) and the matching settings, which start at the ratings."""
    w = rated_kw * 1000.0
    q = Q_RATIO * w
    ratings = {"WMax": (w, sc.w), "VAMax": (w, sc.w), "VarMaxInj": (q, sc.w), "VarMaxAbs": (q, sc.w),
               "VNom": (V_NOM_LL, V_SF), "VMax": (1.1 * V_NOM_LL, V_SF), "VMin": (0.88 * V_NOM_LL, V_SF),
               "AMax": (w / V_NOM_LN, sc.a)}
    if storage:
        ratings |= {"WChaRteMax": (w, sc.w), "WDisChaRteMax": (w, sc.w)}
    return {
        **{name + "Rtg": to_raw(v, sf) for name, (v, sf) in ratings.items()},
        **{name: to_raw(v, sf) for name, (v, sf) in ratings.items()},
        "NorOpCatRtg": CAT_B, "AbnOpCatRtg": CAT_3, "CtrlModes": MAX_W | FIXED_W,
        "W_SF": sc.w, "VA_SF": sc.w, "Var_SF": sc.w, "V_SF": V_SF, "A_SF": sc.a,
    }


def ac_controls_model() -> dict[str, Value | None]:
    """704: the active power limit and setpoint with their reversion points; no limit at power-on."""
    full = to_raw(100.0, PCT_SF)
    return {
        "WMaxLimPctEna": DISABLED, "WMaxLimPct": full, "WMaxLimPctRvrt": full, "WMaxLimPctEnaRvrt": DISABLED,
        "WMaxLimPctRvrtTms": 0, "WMaxLimPctRvrtRem": 0,
        "WSetEna": DISABLED, "WSetMod": WSET_MOD_WATTS, "WSet": 0, "WSetRvrt": 0, "WSetPct": 0,
        "WSetPctRvrt": 0, "WSetEnaRvrt": DISABLED, "WSetRvrtTms": 0, "WSetRvrtRem": 0,
        "WMaxLimPct_SF": PCT_SF, "WSet_SF": 0, "WSetPct_SF": PCT_SF,
    }


def ac_controls_reversions() -> list[Reversion]:
    """704's two reversion timers: the limit and the setpoint each go back to their `*Rvrt` values."""
    return [
        Reversion(704, frozenset({"WMaxLimPctEna", "WMaxLimPct", "WMaxLimPctRvrtTms"}),
                  "WMaxLimPctRvrtTms", "WMaxLimPctRvrtRem",
                  {"WMaxLimPct": "WMaxLimPctRvrt", "WMaxLimPctEna": "WMaxLimPctEnaRvrt"}),
        Reversion(704, frozenset({"WSetEna", "WSetMod", "WSet", "WSetPct", "WSetRvrtTms"}),
                  "WSetRvrtTms", "WSetRvrtRem",
                  {"WSet": "WSetRvrt", "WSetPct": "WSetPctRvrt", "WSetEna": "WSetEnaRvrt"}),
    ]


@dataclass(frozen=True)
class AcState:
    p_w: float
    q_var: float
    wh_injected: float
    wh_absorbed: float
    inv_state: int
    throttle_pct: float  # the cap in force, % of WMax (100 = not throttled)
    throttle_src: int


def publish_power(m: SunSpecMap, p_w: float, q_var: float) -> None:
    """701 active and reactive power, with their per-phase parts."""
    put_balanced(m, 701, "W", ("WL1", "WL2", "WL3"), p_w)
    put_balanced(m, 701, "Var", ("VarL1", "VarL2", "VarL3"), q_var)


def publish_ac(m: SunSpecMap, st: AcState) -> None:
    """701 from the physics: balanced three-phase values, states and throttling."""
    p, q = st.p_w, st.q_var
    s = math.hypot(p, q)
    pf = power_factor(p, q)
    publish_power(m, p, q)
    put_balanced(m, 701, "VA", ("VAL1", "VAL2", "VAL3"), s)
    put_balanced(m, 701, "A", ("AL1", "AL2", "AL3"), s / V_NOM_LN)
    pf_raw = m.raw_for(701, "PF", pf)
    for name in ("PF", "PFL1", "PFL2", "PFL3"):
        m.put(701, name, pf_raw)
    m.put(701, "TotWhInj", int(st.wh_injected))
    m.put(701, "TotWhAbs", int(st.wh_absorbed))
    on = st.inv_state != INV_OFF
    m.put(701, "St", ST_ON if on else ST_OFF)
    m.put(701, "InvSt", st.inv_state)
    m.put(701, "ConnSt", 1 if on else 0)
    m.put(701, "ThrotPct", round(max(0.0, min(100.0, st.throttle_pct))))
    m.put(701, "ThrotSrc", st.throttle_src if st.inv_state == INV_THROTTLED else 0)
