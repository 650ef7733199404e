"""Property: whatever registers a device mapped by a vendor profile sends, the driver's decoding raises
nothing but DeviceFault and never passes on a number that is not finite or not possible for the
device; planning a command from such an image raises nothing but DeviceFault either.

Every shipped profile, and one with a scale register (SunSpec-style exponent), each fed register
images of its own read plan: words mixing anything with NaN and infinity patterns and the types'
extremes, scale registers drawn around and beyond ±10."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import DeviceConfig
from gateway.south.bus_device import RegisterImage
from gateway.south.device import Setpoint
from gateway.south.modbus_client import ModbusPool
from gateway.south.profile import PROFILES_DIR
from gateway.south.register_device import RegisterDevice
from gateway.south.vendor_profile import load_vendor_profile, profile_path
from tests.field.test_vendor_devices import BATTERY_PROFILE, SHIPPED
from tests.south.test_decode_properties import SF_WORDS, WORDS, decode_and_plan

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("name", [*SHIPPED, "test_battery"])
async def test_any_register_image_decodes_to_a_plausible_reading_or_a_device_fault(
    name: str, tmp_path: Path
) -> None:
    directory = PROFILES_DIR
    if name == "test_battery":
        directory = tmp_path
        (tmp_path / "vendor_test_battery.toml").write_text(BATTERY_PROFILE, encoding="utf-8")
    kind = tomllib.loads(profile_path(name, directory).read_text(encoding="utf-8"))["kind"]
    profile = load_vendor_profile(name, kind, directory)
    cfg = DeviceConfig(id="d", kind=kind, protocol="modbus", profile=name, port=1)
    pool = ModbusPool()  # never connected: the images are fed to the decoder directly
    dev = RegisterDevice.from_config(cfg, pool=pool, stale_after_s=3.0, profiles_dir=directory)
    scales = {r.scale_register for r in profile.registers.values() if r.scale_register}
    sf_addresses = {profile.registers[n].address for n in scales}
    outcomes: set[str] = set()

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), p_kw=st.floats(-1000, 1000), connect=st.booleans())
    def decode(data: st.DataObject, p_kw: float, connect: bool) -> None:
        def table(spans: list[tuple[int, int]], sfs: set[int]) -> list[tuple[int, list[int]]]:
            return [(start, [data.draw(SF_WORDS if start + i in sfs else WORDS) for i in range(count)])
                    for start, count in spans]

        image = RegisterImage(table(dev._spans["holding"], sf_addresses), table(dev._spans["input"], set()))
        outcomes.add(decode_and_plan(dev, image, Setpoint(p_kw, connect)))

    try:
        decode()
    finally:
        await pool.close()
    assert "reading" in outcomes, "some images were usable"
