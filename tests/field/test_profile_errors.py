"""A broken vendor profile, or a site file that describes a bus wrongly, is refused when it is loaded,
with an error that names the file, the line and the field: found at the desk, not on site."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import DeviceConfig, SiteFileError, parse_site
from gateway.south.modbus_client import ModbusPool
from gateway.south.profile import PROFILES_DIR, ProfileError
from gateway.south.register_device import RegisterDevice
from gateway.south.vendor_profile import parse_vendor_profile

HUAWEI = (PROFILES_DIR / "vendor_huawei_sun2000.toml").read_text(encoding="utf-8")


def line_of(text: str, fragment: str, after: str = "") -> int:
    """1-based number of the first line holding `fragment` (after the first line holding `after`)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines) if i >= start and fragment in line) + 1


# (what is broken, old text, new text, field named, line holding, message fragment)
BREAKAGES = [
    ("unknown type", 'type = "int16"', 'type = "int12"', "registers.derating_pct.type",
     'type = "int12"', "Input should be 'int16'"),
    ("overlapping registers", "address = 32082", "address = 32081", "registers.reactive_power.address",
     "address = 32081", "overlaps 'active_power'"),
    ("scale out of range", "scale = 0.01", "scale = 0.02", "registers.grid_frequency.scale",
     "scale = 0.02", "out of range: a scale is a power of ten"),
    ("negative scale", "scale = 0.1\nunit = \"V\"", "scale = -0.1\nunit = \"V\"",
     "registers.phase_a_voltage.scale", "scale = -0.1", "out of range"),
    ("range the type cannot hold", "max = 100\nunit = \"%\"", "max = 4000\nunit = \"%\"",
     "registers.derating_pct.max", "max = 4000", "does not fit int16 at scale 0.1"),
    ("reference to no register", 'register = "derating_pct"', 'register = "derating"', "power.register",
     'register = "derating"', "no register 'derating'"),
    ("command on a read-only register", 'on = { register = "startup"', 'on = { register = "device_status"',
     "connect.on.register", 'on = { register = "device_status"', "'device_status' is read-only"),
    ("unknown field", "word_order = \"big\"\n", "word_order = \"big\"\nmax_read_gaps = 3\n", "max_read_gaps",
     "max_read_gaps = 3", "unknown field"),
]


@pytest.mark.parametrize(("what", "old", "new", "field", "holding", "message"), BREAKAGES,
                         ids=[b[0] for b in BREAKAGES])
def test_broken_profile_is_refused_naming_file_line_and_field(
    tmp_path: Path, what: str, old: str, new: str, field: str, holding: str, message: str
) -> None:
    assert HUAWEI.count(old) >= 1, what
    text = HUAWEI.replace(old, new, 1)
    path = tmp_path / "vendor_broken.toml"
    path.write_text(text, encoding="utf-8")
    cfg = DeviceConfig(id="inv9", kind="pv", protocol="modbus", profile="broken", port=1502)
    with pytest.raises(ProfileError) as exc:
        RegisterDevice.from_config(cfg, pool=ModbusPool(), stale_after_s=3.0, profiles_dir=tmp_path)
    error = str(exc.value)
    assert f"{path}:{line_of(text, holding)}: {field}: " in error, error
    assert message in error, error


def test_every_problem_of_a_file_is_listed() -> None:
    start = 'register = "start"'
    text = HUAWEI.replace("scale = 0.01", "scale = 0.03").replace('register = "startup"', start)
    with pytest.raises(ProfileError) as exc:
        parse_vendor_profile(text, "vendor_x.toml")
    error = str(exc.value)
    assert error.startswith("vendor_x.toml: 2 problem(s) in the vendor profile")
    assert f"vendor_x.toml:{line_of(text, 'scale = 0.03')}: registers.grid_frequency.scale" in error
    assert f"vendor_x.toml:{line_of(text, start)}: connect.on.register" in error


def test_missing_or_mismatched_profiles_are_named(tmp_path: Path) -> None:
    cfg = DeviceConfig(id="m", kind="meter", protocol="modbus", profile="huawei_sun2000", port=1502)
    with pytest.raises(ProfileError, match="kind: the profile is for 'pv', the device is 'meter'"):
        RegisterDevice.from_config(cfg, pool=ModbusPool(), stale_after_s=3.0)
    cfg = DeviceConfig(id="m", kind="meter", protocol="modbus", profile="nosuch", port=1502)
    with pytest.raises(ProfileError, match=r"no such vendor profile .*have \['carlo_gavazzi_em24'"):
        RegisterDevice.from_config(cfg, pool=ModbusPool(), stale_after_s=3.0)


SITE = {"site": {"id": "s", "resource_id": "r", "export_cap_kw": 10.0, "import_cap_kw": 10.0}}
METER = {"id": "meter", "kind": "meter", "port": 1502}


@pytest.mark.parametrize(("device", "message"), [
    ({"transport": "rtu"}, "serial: required for transport 'rtu'"),
    ({"transport": "rtu", "serial": {"port": "/dev/ttyUSB0"}, "port": 502},
     "port: not used with transport 'rtu'"),
    ({"transport": "rtu_over_tcp"}, "port: required for transport 'rtu_over_tcp'"),
    ({"port": 502, "serial": {"port": "/dev/ttyUSB0"}}, "serial: only for transport 'rtu'"),
    ({"port": 502, "protocol": "modbus"}, "profile: protocol 'modbus' needs a vendor profile"),
    ({"transport": "rtu", "serial": {"port": "/dev/ttyUSB0", "baudrate": 9601}}, "serial.baudrate"),
    ({"transport": "rtu", "serial": {"port": "/dev/ttyUSB0", "parity": "X"}}, "serial.parity"),
    ({"port": 502, "sim": {"quirks": ["base_0", "base_50000"]}}, "exclude each other"),
])
def test_site_file_names_the_wrong_field(device: dict, message: str) -> None:
    data = {**SITE, "devices": [{"id": "pv1", "kind": "pv", **device}, METER]}
    with pytest.raises(SiteFileError) as exc:
        parse_site(data, "site.toml")
    assert "devices[0] (pv1)" in str(exc.value) and message in str(exc.value), str(exc.value)


def test_devices_of_one_bus_must_agree_on_its_settings() -> None:
    line = {"transport": "rtu", "serial": {"port": "/dev/ttyUSB0", "baudrate": 9600}}
    data = {**SITE, "devices": [
        {"id": "a", "kind": "pv", **line, "unit_id": 1},
        {"id": "b", "kind": "pv", **line, "unit_id": 2, "inter_request_gap_s": 0.05},
        METER,
    ]}
    with pytest.raises(SiteFileError, match="devices a and b are on one bus but differ in inter_request_gap"):
        parse_site(data, "site.toml")
    data["devices"][1] = {"id": "b", "kind": "pv", **line, "unit_id": 1}
    with pytest.raises(SiteFileError, match=r"share the same bus .* and unit_id"):
        parse_site(data, "site.toml")
