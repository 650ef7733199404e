"""Discovery and scaled reads against the simulators, cross-checked with pysunspec2's own client."""

from __future__ import annotations

import pytest

from gateway.south.sunspec_device import SunSpecDevice
from tests.south.conftest import reading_of, reference_read

pytestmark = pytest.mark.asyncio


async def test_discovery_finds_each_variant(run_site) -> None:
    site = await run_site()
    found = {dev_id: dev.discovery for dev_id, dev in site.devices.items() if isinstance(dev, SunSpecDevice)}
    assert found == {
        "pv1": ("ieee1547", [701, 702, 703, 704, 715]),
        "pv2": ("legacy", [103, 120, 121, 122, 123]),
        "bess1": ("ieee1547", [701, 702, 704, 713, 802]),
        "meter": ("ac_meter", [203]),
    }
    for cfg in site.config.devices:
        ref = await reference_read(cfg.port, cfg.unit_id)
        assert ref["base"] == 40000
        assert set(found[cfg.id][1]) <= set(ref["models"])


async def test_readings_are_scaled_like_pysunspec2_reads_them(run_site) -> None:
    # Steady conditions, so that the driver's read and the reference read see the same values.
    site = await run_site(simulator={"load_variation_kw": 0.0})
    pv1, pv2, bess, meter = (site.devices[i] for i in ("pv1", "pv2", "bess1", "meter"))
    ports = {cfg.id: cfg.port for cfg in site.config.devices}

    r = await reading_of(pv1, "output at irradiance × rating", lambda r: r.p_kw == pytest.approx(225.0))
    ref = await reference_read(ports["pv1"])
    assert r.p_kw == pytest.approx(ref[701]["W"] / 1000)
    assert r.rated_kw == pytest.approx(ref[702]["WMax"] / 1000) == pytest.approx(250.0)
    assert r.hz == pytest.approx(ref[701]["Hz"]) == pytest.approx(60.0)
    assert r.v_pu == pytest.approx(ref[701]["LLV"] / ref[702]["VNom"])
    # no WAval in the 1547 models: below its (absent) limit, the output is what the sun gives
    assert r.connected is True and r.limit_pct is None and r.available_kw == pytest.approx(225.0)

    r = await reading_of(pv2, "legacy output settled", lambda r: r.p_kw == pytest.approx(135.0))
    ref = await reference_read(ports["pv2"])
    assert r.p_kw == pytest.approx(ref[103]["W"] / 1000)
    assert r.rated_kw == pytest.approx(ref[121]["WMax"] / 1000) == pytest.approx(150.0)
    assert r.available_kw == pytest.approx(ref[122]["WAval"] / 1000)  # reported by the legacy model 122
    assert r.v_pu == pytest.approx(ref[103]["PPVphAB"] / ref[121]["VRef"])

    r = await bess.read()
    ref = await reference_read(ports["bess1"])
    assert r is not None
    assert r.soc_pct == pytest.approx(ref[713]["SoC"]) == pytest.approx(60.0, abs=0.1)
    assert r.rated_kw == pytest.approx(ref[702]["WMax"] / 1000)
    assert r.max_charge_kw == pytest.approx(ref[702]["WChaRteMax"] / 1000)
    assert r.available_kw == pytest.approx(ref[702]["WDisChaRteMax"] / 1000)

    r = await reading_of(meter, "PCC settled", lambda r: abs(r.p_kw - (225 + 135 - 120)) < 0.5)
    ref = await reference_read(ports["meter"])
    assert r.p_kw == pytest.approx(ref[203]["W"] / 1000, abs=0.5)  # positive = export, as the meter reads
    assert r.q_kvar == pytest.approx(ref[203]["VAR"] / 1000, abs=0.5)
    assert r.hz == pytest.approx(ref[203]["Hz"])
    assert r.rated_kw is None and r.available_kw is None
