"""`der-gateway check-config FILE`: the file is validated, then every device is reached once with the
gateway's own drivers; a problem names the device, its address, the site-file entry and the fix."""

from __future__ import annotations

import asyncio
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w

from gateway.config import SiteFile
from simulators.mosquitto import free_port
from simulators.site import SiteSimulator

pytestmark = pytest.mark.asyncio
MakeSite = Callable[..., tuple[SiteFile, Path]]


async def check_config(*args: str) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "check-config", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=os.environ)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


def line_of(lines: list[str], device: str) -> str:
    return next(line for line in lines if line.split()[1:2] == [device])


def index(site: SiteFile, device: str) -> int:
    return [d.id for d in site.devices].index(device)


def variant(path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the site file with `edit` applied: the simulators keep serving the original."""
    data = tomllib.loads(path.read_text())
    edit(data)
    out = path.with_name(path.stem + "-variant.toml")
    out.write_text(tomli_w.dumps(data))
    return out


async def test_every_device_answers_with_its_models_and_nameplate(make_site: MakeSite) -> None:
    site, path = make_site()
    async with SiteSimulator(site):
        code, lines, err = await check_config(str(path))
    assert code == 0, (lines, err)
    assert lines[0].startswith(f"{path}: valid — site site-001, {len(site.devices)} devices")
    assert all(line_of(lines, d.id).startswith(f"  ok    {d.id} ") for d in site.devices)
    pv1 = line_of(lines, "pv1")
    port = site.devices[index(site, "pv1")].port
    assert pv1 == (f"  ok    pv1 (127.0.0.1:{port} unit 1, pv): OK — SunSpec models 701, 702, 703, 704, 715 "
                   "(ieee1547), nameplate 250 kW, now 225.0 kW")
    assert "SunSpec models 103, 120, 121, 122, 123 (legacy), nameplate 150 kW" in line_of(lines, "pv2")
    assert "SoC 60 %" in line_of(lines, "bess1")
    assert "at the PCC (+ = export)" in line_of(lines, "meter")
    assert lines[-1] == f"all {len(site.devices)} devices answer"


async def test_a_device_that_is_off_or_silent_or_of_another_kind_is_named_with_the_fix(
        make_site: MakeSite) -> None:
    site, path = make_site()
    nobody = free_port()

    pv1, pv2, bess1 = (index(site, d) for d in ("pv1", "pv2", "bess1"))

    def edit(data: dict) -> None:
        data["devices"][pv2]["port"] = nobody  # nothing listens there
        data["devices"][bess1]["kind"] = "pv"  # a battery: its models are not a PV inverter's
        # the devices not under test must answer on a loaded machine too (the DNP3 one missed 1 s once)
        for i, dev in enumerate(data["devices"]):
            if i not in (pv1, pv2, bess1):
                dev["timeout_s"] = 5.0

    async with SiteSimulator(site) as sim:
        sim.devices["pv1"].set_fault("silent")
        code, lines, err = await check_config(str(variant(path, edit)))
    assert code == 1, (lines, err)
    assert line_of(lines, "pv2") == (
        f"  FAIL  pv2 (127.0.0.1:{nobody} unit 1, pv): connection refused or host unreachable — "
        f"is the device on? check host and port in devices[{pv2}]")
    assert line_of(lines, "pv1").endswith(
        f"no answer within 1 s — check host, port and unit_id in devices[{pv1}] (a gateway or another "
        f"master in the way?), or raise devices[{pv1}].timeout_s")
    line = line_of(lines, "bess1")
    assert line.startswith("  FAIL  bess1") and "but the profile needs one of" in line
    assert line.endswith(f"— check kind and profile in devices[{bess1}]")
    assert line_of(lines, "meter").startswith("  ok    meter")
    assert lines[-1] == f"3 of {len(site.devices)} devices cannot be used as configured: see FAIL above"


async def test_an_invalid_file_names_the_field_and_reaches_no_device(make_site: MakeSite) -> None:
    _, path = make_site()

    def edit(data: dict) -> None:
        data["web"] = {"enabled": True, "port": 0}
        data["devices"][0]["unit_id"] = 300  # pv1

    code, lines, err = await check_config(str(variant(path, edit)))
    assert code == 2 and lines == []
    assert "2 problem(s) in the site file" in err
    assert "devices[0] (pv1).unit_id: Input should be less than or equal to 247" in err
    assert "web.port: Input should be greater than or equal to 1" in err


async def test_no_probe_only_validates(make_site: MakeSite) -> None:
    _, path = make_site()  # no simulator: nothing would answer
    code, lines, _ = await check_config(str(path), "--no-probe")
    assert code == 0 and len(lines) == 1 and "valid" in lines[0]
