"""Devices without SunSpec, driven by vendor profiles: the simulator lays its map out from the same profile
file, and the checks below look at the registers themselves (word order, scale) as well as at what the
driver makes of them."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.config import DeviceConfig
from gateway.south.device import DeviceFault, Setpoint, WriteRecord
from gateway.south.modbus_client import BusSpec, ModbusExceptionResponse, ModbusPool
from gateway.south.profile import PROFILES_DIR
from gateway.south.register_device import RegisterDevice
from gateway.south.vendor_profile import profile_path
from simulators.modbus_server import ModbusEndpoint
from simulators.vendor import VendorDevice
from tests.field.conftest import rtu
from tests.south.conftest import reading_of, wait_until

pytestmark = pytest.mark.asyncio

SHIPPED = sorted(p.stem.removeprefix("vendor_") for p in PROFILES_DIR.glob("vendor_*.toml"))


def words(sim: VendorDevice, address: int, count: int, table: str = "holding") -> list[int]:
    return [sim.regs.tables[table][a] for a in range(address, address + count)]  # type: ignore[index]


async def test_vendor_inverter_is_limited_and_read_back(line, field_site, free_port) -> None:
    bus = await line("rs485")
    site = await field_site([
        rtu(bus, 1, id="hw1", kind="pv", protocol="modbus", profile="huawei_sun2000",
            reversion_timeout_s=20.0, sim={"rated_kw": 100.0}),
        {"id": "meter", "kind": "meter", "port": free_port()},
    ])
    hw1, sim = site.devices["hw1"], site.sim.devices["hw1"]
    assert isinstance(sim, VendorDevice)
    # 30073 rated power, U32 big-endian (high word first), 1 W per count: 100,000 W = 0x0001_86A0
    assert words(sim, 30073, 2) == [0x0001, 0x86A0]
    r = await hw1.read()
    assert r is not None and r.rated_kw == pytest.approx(100.0) and r.hz == pytest.approx(60.0)
    assert r.limit_pct is None and r.connected is True  # 40125 at its power-on 100 %: no limit

    assert await hw1.write(Setpoint(p_kw=40.0))
    # 40125, I16, gain 10: 40.0 % is written as 400; then the schedule validity (42019, U32) in
    # seconds, 0 = for good: when it runs out the inverter drops the derating (full output), above its
    # safe limit (the site file's default 0 %), so the inverter keeps this one when the gateway dies; and
    # the first command also says "start" (40200), once the limit is in place
    assert [(w.point, w.address, w.raw, w.purpose) for w in site.writes] == [
        ("huawei_sun2000.derating_pct", 40125, 400, "setpoint"),
        ("huawei_sun2000.schedule_valid_s", 42019, 0, "setpoint"),
        ("huawei_sun2000.startup", 40200, 0, "connect"),
    ]
    assert words(sim, 40125, 1) == [400] and words(sim, 42019, 2) == [0, 0]
    await wait_until("the inverter applies 40 %", lambda: sim.active_limit_pct == pytest.approx(40.0))
    r = await reading_of(hw1, "output at the limit", lambda r: r.p_kw == pytest.approx(40.0, abs=0.5))
    assert r.limit_pct == pytest.approx(40.0) and r.setpoint_kw == pytest.approx(40.0)
    # 32080 active power, I32 big-endian: what the driver reads is what the registers hold
    assert words(sim, 32080, 2) == [0, round(sim.p_kw * 1000)]

    assert await hw1.write(Setpoint(p_kw=250.0))  # above the rating: clamped to the register's 100 %
    # a new limit writes what changed: the validity stands (it is refreshed on its own schedule)
    assert [(w.point, w.raw) for w in site.writes[-1:]] == [("huawei_sun2000.derating_pct", 1000)]

    assert await hw1.write(Setpoint(p_kw=30.0, connect=False))  # shutdown first, then the new limit
    assert [w.point for w in site.writes[-2:]] == ["huawei_sun2000.shutdown", "huawei_sun2000.derating_pct"]
    await reading_of(hw1, "shut down", lambda r: r.connected is False and r.p_kw == pytest.approx(0.0))
    assert await hw1.write(Setpoint(p_kw=30.0, connect=True))
    assert site.writes[-1].point == "huawei_sun2000.startup"
    await wait_until("running again", lambda: sim.connected)


async def test_vendor_inverter_drops_the_limit_when_the_gateway_stops_refreshing(
    field_site, free_port
) -> None:
    # safe_limit_pct 100: full output, what the inverter drops to, is safe here, so the validity is written
    site = await field_site([
        {"id": "hw1", "kind": "pv", "protocol": "modbus", "profile": "huawei_sun2000", "port": free_port(),
         "reversion_timeout_s": 2.0, "safe_limit_pct": 100.0},
        {"id": "meter", "kind": "meter", "port": free_port()},
    ])
    hw1, sim = site.devices["hw1"], site.sim.devices["hw1"]
    assert await hw1.write(Setpoint(p_kw=50.0))
    await wait_until("limited", lambda: sim.active_limit_pct == pytest.approx(50.0))
    await hw1.close()  # the gateway is gone: nothing refreshes the schedule any more
    await wait_until("the instruction lapses after its valid duration", lambda: sim.active_limit_pct is None)


async def test_little_endian_int32_meter_reads_correctly(field_site, free_port) -> None:
    site = await field_site([
        {"id": "pv1", "kind": "pv", "port": free_port(), "sim": {"rated_kw": 100.0}},
        {"id": "meter", "kind": "meter", "protocol": "modbus", "profile": "carlo_gavazzi_em24",
         "transport": "rtu_over_tcp", "port": free_port()},
    ])
    meter, sim = site.devices["meter"], site.sim.meter
    assert isinstance(sim, VendorDevice)
    r = await reading_of(meter, "the site's export", lambda r: r.p_kw == pytest.approx(sim.p_kw, abs=0.2))
    assert r.p_kw > 50  # 90 kW of sun against 10 kW of load: exporting, shown positive
    # W sys (0x0028), INT32 x0.1 W, low word first; the meter counts import as positive
    raw = round(-sim.p_kw * 1000 * 10) & 0xFFFFFFFF
    assert words(sim, 0x0028, 2) == [raw & 0xFFFF, raw >> 16]
    assert r.hz == pytest.approx(60.0)


async def test_float32_input_register_meter(field_site, free_port) -> None:
    port = free_port()
    site = await field_site([
        {"id": "pv1", "kind": "pv", "port": free_port(), "sim": {"rated_kw": 50.0}},
        {"id": "meter", "kind": "meter", "protocol": "modbus", "profile": "eastron_sdm630", "port": port},
    ])
    meter, sim = site.devices["meter"], site.sim.meter
    r = await reading_of(meter, "the site's export", lambda r: r.p_kw == pytest.approx(sim.p_kw, abs=0.2))
    assert r.p_kw > 20 and r.v_pu is None  # a voltage, but no nominal to compare it with
    pool = ModbusPool()
    try:  # the measurements are input registers (FC4): the holding table has no such address
        with pytest.raises(ModbusExceptionResponse, match="exception 2"):
            await pool.unit_on(BusSpec(port=port), 1, 1.0).read(0x0034, 2, "holding")
    finally:
        await pool.close()


BATTERY_PROFILE = """
kind = "battery"
positive_w = "absorption"     # this vendor counts charging as positive
word_order = "big"

[registers.w_sf]
address = 100
type = "int16"
[registers.power]
address = 101
type = "int16"
scale_register = "w_sf"
[registers.rated]
address = 102
type = "int32"
word_order = "little"
scale_register = "w_sf"
[registers.soc]
address = 104
table = "input"
type = "uint16"
scale = 0.1
[registers.setpoint]
address = 110
type = "int16"
scale_register = "w_sf"
access = "rw"
write_function = 6
[registers.enable]
address = 111
type = "uint16"
access = "rw"

[read]
p_w = "power"
rated_w = "rated"
soc_pct = "soc"

[power]
unit = "W"
register = "setpoint"
enable = { register = "enable", on = 1, off = 0 }
"""


@pytest_asyncio.fixture
async def test_battery(
    tmp_path: Path, free_port
) -> AsyncIterator[tuple[VendorDevice, RegisterDevice, list[WriteRecord]]]:
    (tmp_path / "vendor_test_battery.toml").write_text(BATTERY_PROFILE, encoding="utf-8")
    cfg = DeviceConfig(id="b1", kind="battery", protocol="modbus", profile="test_battery", port=free_port(),
                       sim={"rated_kw": 50.0, "initial_soc_pct": 50.0, "response_time_s": 0.2})
    sim = VendorDevice(cfg, profiles_dir=tmp_path)
    endpoint = ModbusEndpoint("127.0.0.1", cfg.port or 0)
    sim.attach(endpoint)
    await endpoint.start()
    stepping = asyncio.get_running_loop().create_task(_step(sim))
    pool = ModbusPool()
    records: list[WriteRecord] = []
    dev = RegisterDevice.from_config(cfg, pool=pool, stale_after_s=3.0, on_write=records.append,
                                     profiles_dir=tmp_path)
    try:
        yield sim, dev, records
    finally:
        stepping.cancel()
        await dev.close()
        await pool.close()
        await endpoint.stop()


async def _step(sim: VendorDevice) -> None:
    while True:
        sim.step(asyncio.get_running_loop().time())
        await asyncio.sleep(0.1)


async def test_scale_from_another_register_signed_setpoint_and_fc6(test_battery) -> None:
    sim, dev, records = test_battery
    assert await dev.connect()
    exponent = sim.regs.raw("w_sf")
    assert exponent == 1  # 75 kW does not fit int16 in W: the device counts in 10 W steps
    r = await dev.read()
    assert r is not None and r.rated_kw == pytest.approx(50.0) and r.soc_pct == pytest.approx(50.0)
    assert words(sim, 102, 2) == [5000, 0]  # 50,000 W / 10, int32 low word first

    assert await dev.write(Setpoint(p_kw=-20.0))  # charge 20 kW: +20,000 W for this vendor
    assert [(w.point, w.raw) for w in records] == [
        ("test_battery.setpoint", 2000), ("test_battery.enable", 1)]
    r = await reading_of(dev, "charging at 20 kW", lambda r: r.p_kw == pytest.approx(-20.0, abs=0.3))
    assert r.setpoint_kw == pytest.approx(-20.0)
    await wait_until("the state of charge rises", lambda: (sim.soc_pct or 0) > 50.0)


@pytest.mark.parametrize("name", SHIPPED)
async def test_every_shipped_profile_simulates_and_reads(name: str, free_port) -> None:
    kind = tomllib.loads(profile_path(name).read_text(encoding="utf-8"))["kind"]
    cfg = DeviceConfig(id="d", kind=kind, protocol="modbus", profile=name, port=free_port())
    sim = VendorDevice(cfg, irradiance_pu=0.5, max_kw=100.0)
    sim.update(12.5, -3.0)
    sim.step(0.0)
    endpoint = ModbusEndpoint("127.0.0.1", cfg.port or 0)
    sim.attach(endpoint)
    await endpoint.start()
    pool = ModbusPool()
    dev = RegisterDevice.from_config(cfg, pool=pool, stale_after_s=3.0)
    try:
        assert await dev.connect(), dev.last_error
        r = await dev.read()
        assert r is not None and r.p_kw == pytest.approx(sim.p_kw, abs=0.01)
        assert r.hz == pytest.approx(60.0)
    finally:
        await dev.close()
        await pool.close()
        await endpoint.stop()


async def test_stuck_vendor_inverter_reads_the_new_limit_back_but_keeps_its_output(
    field_site, free_port
) -> None:
    huawei = {"kind": "pv", "protocol": "modbus", "profile": "huawei_sun2000", "sim": {"rated_kw": 100.0}}
    site = await field_site([
        {"id": "hw1", "port": free_port(), **huawei},
        {"id": "hw2", "port": free_port(), **huawei},  # the witness: follows the same commands
        {"id": "meter", "kind": "meter", "protocol": "modbus", "profile": "eastron_sdm630",
         "port": free_port()},
    ])
    (hw1, hw2), sim1 = (site.devices["hw1"], site.devices["hw2"]), site.sim.devices["hw1"]
    for dev in (hw1, hw2):
        assert await dev.write(Setpoint(p_kw=40.0))
    await reading_of(hw1, "limited to 40 kW", lambda r: r.p_kw == pytest.approx(40.0, abs=0.5))
    sim1.set_fault("stuck")
    assert sim1.fault == "stuck"
    for dev in (hw1, hw2):
        assert await dev.write(Setpoint(p_kw=10.0))
    await reading_of(hw2, "the witness at 10 kW", lambda r: r.p_kw == pytest.approx(10.0, abs=0.5))
    r = await hw1.read()
    assert r is not None and r.limit_pct == pytest.approx(10.0), "the write reads back as written"
    assert r.p_kw == pytest.approx(40.0, abs=0.5), "the stuck inverter followed the new limit"
    with pytest.raises(ValueError, match="unknown fault mode 'stuck' for a simulated meter"):
        site.sim.meter.set_fault("stuck")  # it takes no commands
    sim1.set_fault("none")
    await reading_of(hw1, "following again", lambda r: r.p_kw == pytest.approx(10.0, abs=0.5))


@pytest.mark.parametrize(("profile", "raw", "why"), [
    ("eastron_sdm630", "nan", "not a finite number"),  # float32: the meter sends NaN
    ("carlo_gavazzi_em24", "2147483647", "2.14748e+08 W is beyond ±1e+08 W"),  # int32 saturated
])
async def test_nan_meter_reading_is_a_fault_naming_the_register_and_clears(
    field_site, free_port, profile: str, raw: str, why: str
) -> None:
    site = await field_site([
        {"id": "pv1", "kind": "pv", "port": free_port(), "sim": {"rated_kw": 50.0}},
        {"id": "meter", "kind": "meter", "protocol": "modbus", "profile": profile, "port": free_port()},
    ])
    meter, sim = site.devices["meter"], site.sim.meter
    assert await meter.read() is not None
    sim.set_fault("nan")
    assert await meter.read() is None and not meter.online
    register = {"eastron_sdm630": "total_power", "carlo_gavazzi_em24": "w_sys"}[profile]
    assert str(meter.last_error).startswith(f"meter: {profile}.{register} = {raw}: {why}")
    assert str(meter.last_error).endswith("no reading without active power")
    sim.set_fault("none")
    await reading_of(meter, "back", lambda r: r.p_kw == pytest.approx(sim.p_kw, abs=0.2))


async def test_scale_register_out_of_range_fails_reads_and_writes_cleanly(test_battery) -> None:
    sim, dev, _ = test_battery
    assert await dev.connect()
    assert await dev.write(Setpoint(p_kw=-20.0))
    sim.set_fault("bad_sf", sf=-0x7FFF)  # 10^-32767 is 0: every value 0, every write a division by zero
    assert await dev.read() is None
    err = str(dev.last_error)
    assert err.startswith("b1: test_battery.power = ")
    assert "under test_battery.w_sf = -32767: a scale exponent beyond ±10" in err
    dev._retry.succeeded()  # retry at once: the recovery re-applies the command, without a usable rating
    assert await dev.read() is None
    assert str(dev.last_error) == "b1: cannot command: the device reports no rated power"
    sim.set_fault("none")
    await reading_of(dev, "back, charging", lambda r: r.setpoint_kw == pytest.approx(-20.0))


async def test_garbage_from_a_vendor_inverter_never_escapes_the_driver(field_site, free_port) -> None:
    site = await field_site([
        {"id": "hw1", "kind": "pv", "protocol": "modbus", "profile": "huawei_sun2000", "port": free_port(),
         "sim": {"rated_kw": 100.0}},
        {"id": "meter", "kind": "meter", "port": free_port()},
    ])
    hw1, sim = site.devices["hw1"], site.sim.devices["hw1"]
    sim.set_fault("garbage")
    for _ in range(20):
        hw1._retry.succeeded()  # no backoff between the reads: every read decodes a new image
        r = await hw1.read()
        assert r is not None or isinstance(hw1.last_error, DeviceFault)
        assert r is None or (abs(r.p_kw) <= 200.0 and (r.hz is None or 40 <= r.hz <= 70))
        assert await hw1.write(Setpoint(p_kw=30.0)) in (True, False)
    sim.set_fault("none")
    await reading_of(hw1, "back", lambda r: True)
