"""What the site tells the 2030.5 server about itself (CSIP-AUS: ALL-06/07/08/09/10).

- DERCapability and DERSettings: PUT at start and whenever they change (an unchanged one is not sent again);
- DERStatus: PUT at the DERList's pollRate;
- two MirrorUsagePoints, POSTed once: the site (roleFlags 0x03, premises aggregation point, mirror) and
  its DER (0x49, DER, mirror, submeter), each with average W, var (and, for the site, V and Hz) readings
  of the interval that ended at each UTC-aligned tick of the server's postRate.

Sign conventions (CSIP-AUS): the site's W and var are positive for import, negative for export; the DER's
are positive for generation/discharge. Each reading's value (2030.5 Reading.value, Int48) is sent with
the power of ten its ReadingType declares.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.config import SiteFile
from gateway.north.port import CycleView
from gateway.north.sep2 import codec

if TYPE_CHECKING:
    from gateway.north.sep2.transport import Server

log = logging.getLogger(__name__)
SITE_ROLE, DER_ROLE = 0x03, 0x49
DEFAULT_POST_S = 300
# Reading.value is Int48 (sep.xsd ReadingBase), not Int16 as ActivePower's: W at 10^0 fits any site (an
# Int16 bound clipped a site's export beyond 32.8 kW to -32767 W; found by test_all_24/test_all_10)
INT48 = 2**47
# DERControlType bits the gateway carries out (opModConnect, opModEnergize); the CSIP-AUS limits are in
# doeModesSupported: export, import, generation and load limits
MODES = 0x04 | 0x08
DOE_MODES = 0x01 | 0x02 | 0x04 | 0x08
# (name, uom, power of ten): 38 W, 63 var, 29 V, 33 Hz
QUANTITIES = {"w": (38, 0), "var": (63, 0), "v": (29, -1), "hz": (33, -2)}
SITE_QUANTITIES, DER_QUANTITIES = ("w", "var", "v", "hz"), ("w", "var")


def mrid(lfdi: str, role: int, index: int = 0) -> str:
    """32 hex, unique per site and use: the LFDI's first 20 hex, the role flags, an index, then zeros
    where a registered IANA PEN would go (the gateway has none)."""
    return f"{lfdi[:20]}{role:02X}{index:02X}{0:08X}"


@dataclass
class Readings:
    """Averages over a post interval, from each control cycle's meter and device readings."""

    last: CycleView | None = None
    _sums: dict[str, float] = field(default_factory=dict)
    _count: int = 0

    def add(self, view: CycleView) -> None:
        self.last = view
        meter = view.meter
        if meter is None:
            return
        online = [d for d in view.devices if d.online]
        sample = {"site_w": -meter.p_kw * 1000, "site_var": -meter.q_kvar * 1000, "site_v": meter.v_pu,
                  "site_hz": meter.hz, "der_w": sum(d.p_kw for d in online) * 1000,
                  "der_var": sum(d.q_kvar for d in online) * 1000}
        for key, value in sample.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1

    def take(self, start: int, end: int) -> Interval | None:
        """The averages since the last take, as the interval [start, end); None when nothing was read."""
        if not self._count:
            return None
        averages = {k: v / self._count for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return Interval(start, end, averages)


@dataclass(frozen=True)
class Interval:
    start: int
    end: int
    averages: dict[str, float]


class Reporter:
    def __init__(self, site: SiteFile, lfdi: str) -> None:
        self.site, self.lfdi = site, lfdi
        self.mups: dict[int, str] = {}  # role flags → the MirrorUsagePoint's href on the server
        self.post_s: float = DEFAULT_POST_S
        self._sent: dict[str, bytes] = {}  # DER resource → the body last PUT (unchanged ones are not sent)
        self.nominal_v = site.sep2.nominal_v

    # ---- DERCapability, DERSettings, DERStatus -------------------------------------------------------
    @staticmethod
    def rated_w(view: CycleView) -> float:
        """The site's DER rating as its devices report it (SunSpec WRtg, the DNP3 nameplate): rtgMaxW and
        setMaxW, and what setGradW is a percentage of."""
        return sum(d.rated_kw for d in view.devices) * 1000

    def capability(self, view: CycleView) -> codec.DERCapability:
        kinds = {d.kind for d in self.site.controllable}
        der_type = codec.DERType.COMBINED_PV_AND_STORAGE if "battery" in kinds else \
            codec.DERType.PHOTOVOLTAIC_SYSTEM
        return codec.DERCapability(modesSupported=f"{MODES:08X}",
                                   rtgMaxW=codec.active_power(self.rated_w(view)), type_=der_type,
                                   doeModesSupported=f"{DOE_MODES:02X}")

    def settings(self, view: CycleView, set_grad_w: int) -> codec.DERSettings:
        return codec.DERSettings(setMaxW=codec.active_power(self.rated_w(view)), setGradW=set_grad_w,
                                 modesEnabled=f"{MODES:08X}", doeModesEnabled=f"{DOE_MODES:02X}",
                                 updatedTime=int(time.time()))

    @staticmethod
    def status(view: CycleView | None, offset_s: int) -> codec.DERStatus:
        now = int(time.time()) + offset_s
        devices = view.devices if view is not None else []
        online = [d for d in devices if d.online]
        connected = any(d.connected for d in online)
        # ConnectStatusType bits: 0 connected, 1 available, 2 operating
        bits = (0x01 if connected else 0) | (0x02 if online else 0) | \
            (0x04 if connected and any(abs(d.p_kw) > 0.05 for d in online) else 0)
        socs = [d.soc_pct for d in online if d.soc_pct is not None]
        return codec.DERStatus(
            readingTime=now,
            genConnectStatus=codec.ConnectStatus(dateTime=now, value=f"{bits:02X}"),
            operationalModeStatus=codec.OperationalModeStatus(dateTime=now, value=2 if online else 1),
            stateOfChargeStatus=(codec.StateOfChargeStatus(dateTime=now, value=round(sum(socs) / len(socs)))
                                 if socs else None))

    async def report_der(self, server: Server, der: codec.DER, view: CycleView | None, offset_s: int,
                         set_grad_w: int) -> None:
        """DERCapability and DERSettings when they changed, DERStatus every time (once a cycle has read the
        devices: their ratings are what is reported)."""
        if view is None:
            return
        for name, link, make in (("dercap", der.DERCapabilityLink, lambda: self.capability(view)),
                                 ("derg", der.DERSettingsLink, lambda: self.settings(view, set_grad_w))):
            if link is None:
                continue
            obj = make()
            key = codec.emit(obj.model_copy(update={"updatedTime": 0}) if name == "derg" else obj)
            if self._sent.get(name) != key:
                await server.put(link.href, obj)
                self._sent[name] = key
        if der.DERStatusLink is not None:
            await server.put(der.DERStatusLink.href, self.status(view, offset_s))

    # ---- MirrorUsagePoints ---------------------------------------------------------------------------
    def _reading_type(self, quantity: str) -> codec.ReadingType:
        uom, pow10 = QUANTITIES[quantity]
        return codec.ReadingType(uom=uom, kind=37, dataQualifier=2, flowDirection=1,
                                 powerOfTenMultiplier=pow10, intervalLength=int(self.post_s))

    def _mup(self, role: int, quantities: tuple[str, ...]) -> codec.MirrorUsagePoint:
        readings = [codec.MirrorMeterReading(mRID=mrid(self.lfdi, role, i + 1), description=q,
                                             readingType=self._reading_type(q))
                    for i, q in enumerate(quantities)]
        return codec.MirrorUsagePoint(mRID=mrid(self.lfdi, role), roleFlags=f"{role:02X}",
                                      serviceCategoryKind=0, status=1, deviceLFDI=self.lfdi,
                                      mirrorMeterReadings=readings, postRate=int(self.post_s))

    async def register_mups(self, server: Server, list_href: str) -> None:
        """POST both MirrorUsagePoints (once) and take the postRate the server set on them."""
        for role, quantities in ((SITE_ROLE, SITE_QUANTITIES), (DER_ROLE, DER_QUANTITIES)):
            location = await server.post(list_href, self._mup(role, quantities))
            if not location:
                raise codec.Sep2Error(f"POST {list_href}: MirrorUsagePoint created without a Location")
            self.mups[role] = location
            mup = await server.get(codec.MirrorUsagePoint, location)
            if mup.postRate:
                self.post_s = float(mup.postRate)
        log.info("2030.5: MirrorUsagePoints %s, postRate %.0f s", self.mups, self.post_s)

    async def read_post_rate(self, server: Server, list_href: str) -> int | None:
        """Take the postRate the server now sets on the site's MirrorUsagePoints (it may change it at any
        time: CSIP-AUS ALL-10); the list's pollRate."""
        mupl, mups = await server.get_list(codec.MirrorUsagePointList, list_href,
                                           lambda page: page.mirrorUsagePoints)
        ours = {mrid(self.lfdi, role) for role in self.mups}
        rates = [m.postRate for m in mups if m.mRID.upper() in ours and m.postRate]
        if rates:
            self.post_s = float(min(rates))
        return mupl.pollRate

    def _value(self, quantity: str, value: float) -> int:
        pow10 = QUANTITIES[quantity][1]
        if quantity == "v":
            value *= self.nominal_v
        return max(-INT48, min(INT48, round(value / 10**pow10)))

    async def post_readings(self, server: Server, interval: Interval | None) -> None:
        """The averages of `interval` (its times on the server's clock)."""
        if interval is None:
            return
        period = codec.DateTimeInterval(start=interval.start, duration=interval.end - interval.start)
        for role, prefix, quantities in ((SITE_ROLE, "site", SITE_QUANTITIES),
                                         (DER_ROLE, "der", DER_QUANTITIES)):
            href = self.mups.get(role)
            if href is None:
                continue
            for i, q in enumerate(quantities):
                value = self._value(q, interval.averages[f"{prefix}_{q}"])
                await server.post(href, codec.MirrorMeterReading(
                    mRID=mrid(self.lfdi, role, i + 1),
                    reading=codec.Reading(value=value, timePeriod=period)))
