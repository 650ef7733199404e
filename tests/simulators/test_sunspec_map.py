"""pysunspec2's own client scans every simulator: the expected models, correctly scaled values."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusTcpClient

from simulators.site import SiteSimulator
from tests.simulators.util import SunSpecReader

pytestmark = pytest.mark.asyncio

EXPECTED_MODELS = {
    "pv1": [1, 701, 702, 703, 704, 715],  # ieee1547 variant
    "pv2": [1, 103, 120, 121, 122, 123],  # legacy variant, with 122 (status)
    "bess1": [1, 701, 702, 704, 713, 802],
    "meter": [1, 203],
}


async def test_every_device_has_its_models_and_common_block(start_site) -> None:
    sim: SiteSimulator = await start_site()
    for cfg in (d for d in sim.site.devices if d.protocol == "sunspec"):  # pv3 speaks DNP3
        async with SunSpecReader(cfg) as r:
            assert r.base_addr == 40000
            assert r.model_ids == EXPECTED_MODELS[cfg.id]
            common = await r.read(1)
            assert common["Mn"] == "der-gateway"
            assert common["SN"] == f"SIM-{cfg.id}"
            assert common["DA"] == cfg.unit_id


async def test_end_model_follows_the_last_model(start_site) -> None:
    sim: SiteSimulator = await start_site()
    cfg = sim.site.devices[0]
    end = sim.devices[cfg.id].map.end
    client = AsyncModbusTcpClient(cfg.host, port=cfg.port)
    await client.connect()
    try:
        rr = await client.read_holding_registers(end - 2, count=2, device_id=cfg.unit_id)
        assert rr.registers == [0xFFFF, 0]
        rr = await client.read_holding_registers(40000, count=2, device_id=cfg.unit_id)
        assert rr.registers == [0x5375, 0x6E53]  # "SunS"
    finally:
        client.close()


async def test_pv_1547_values_are_scaled(start_site) -> None:
    sim: SiteSimulator = await start_site(simulator={"irradiance_pu": 0.9})
    cfg = next(d for d in sim.site.devices if d.id == "pv1")  # 250 kW: W overflows int16 unscaled
    async with SunSpecReader(cfg) as r:
        cap = await r.read(702)
        assert cap["W_SF"] == 1
        assert cap["WMaxRtg"] == 250_000
        assert cap["WMax"] == 250_000
        assert cap["VNomRtg"] == pytest.approx(480.0)
        meas = await r.read(701)
        assert (meas["V_SF"], meas["Hz_SF"], meas["W_SF"]) == (-1, -2, 1)
        assert meas["W"] == pytest.approx(225_000, abs=10)
        assert meas["WL1"] + meas["WL2"] + meas["WL3"] == pytest.approx(meas["W"])
        assert meas["Hz"] == pytest.approx(60.0)
        assert meas["LLV"] == pytest.approx(480.0)
        assert meas["TmpAmb"] is None  # not implemented: SunSpec's sentinel, read back as None
        ctl = await r.read(704)
        assert ctl["WMaxLimPct_SF"] == -2
        assert ctl["WMaxLimPct"] == pytest.approx(100.0)
        assert ctl["VarSetEna"] is None


async def test_legacy_pv_values_are_scaled(start_site) -> None:
    sim: SiteSimulator = await start_site(simulator={"irradiance_pu": 0.9})
    cfg = next(d for d in sim.site.devices if d.id == "pv2")  # 150 kW legacy
    async with SunSpecReader(cfg) as r:
        plate = await r.read(120)
        assert plate["WRtg"] == 150_000
        assert plate["DERTyp"] == 4  # PV
        inv = await r.read(103)
        assert inv["W"] == pytest.approx(135_000, abs=10)
        assert inv["PhVphA"] == pytest.approx(277.1, abs=0.1)
        assert inv["Hz"] == pytest.approx(60.0)
        assert inv["PF"] == pytest.approx(100.0)  # 103 PF is in percent
        settings = await r.read(121)
        assert settings["WMax"] == 150_000
        status = await r.read(122)
        assert status["PVConn"] & 1  # CONNECTED
        assert status["WAval"] == pytest.approx(135_000, abs=10)
        ctl = await r.read(123)
        assert (ctl["Conn"], ctl["WMaxLim_Ena"], ctl["WMaxLimPct"]) == (1, 0, pytest.approx(100.0))
        assert ctl["WMaxLimPct_SF"] == -1


async def test_battery_values_are_scaled(start_site) -> None:
    sim: SiteSimulator = await start_site()
    cfg = next(d for d in sim.site.devices if d.id == "bess1")  # 200 kW / 400 kWh, SoC 60 %
    async with SunSpecReader(cfg) as r:
        cap = await r.read(702)
        assert cap["WChaRteMax"] == 200_000
        assert cap["WDisChaRteMax"] == 200_000
        stor = await r.read(713)
        assert stor["SoC"] == pytest.approx(60.0)
        assert stor["WHRtg"] == 400_000
        bat = await r.read(802)
        assert bat["SoC"] == pytest.approx(60.0)
        assert bat["SoC_SF"] == -1
        assert bat["SetOp"] == 1  # CONNECT
        assert (await r.read(701))["W"] == 0


async def test_meter_reads_site_net_power(start_site) -> None:
    sim: SiteSimulator = await start_site(simulator={"irradiance_pu": 0.9, "load_kw": 120.0})
    cfg = sim.site.meter
    expected_w = (225.0 + 135.0 + 27.0 + 0.0 - 120.0) * 1000.0  # export positive; pv3 (DNP3) 27 kW
    async with SunSpecReader(cfg) as r:
        m = await r.read(203)
        assert m["W_SF"] >= 1
        assert m["W"] == pytest.approx(expected_w, abs=10 ** m["W_SF"])
        assert m["WphA"] + m["WphB"] + m["WphC"] == pytest.approx(m["W"])
        assert m["PhVphA"] == pytest.approx(277.1, abs=0.1)
        assert m["Hz"] == pytest.approx(60.0)
