"""`der-gateway simulate --site FILE` as a subprocess: serves every port, stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from gateway.config import SiteFile
from simulators.example_site import example_site
from simulators.mosquitto import free_port
from simulators.run import LISTED_DEVICES, _listening_line
from simulators.site import SiteSimulator
from tests.simulators.util import eventually

pytestmark = pytest.mark.asyncio


def der_gateway() -> list[str]:
    script = Path(sys.executable).with_name("der-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def ports(site: SiteFile) -> list[int]:
    return [d.port for d in site.devices] + [p for p in [site.simulator.control_port] if p]


@pytest.mark.parametrize(("sig", "extra"), [(signal.SIGINT, []), (signal.SIGTERM, ["--quiet"])])
async def test_simulate_serves_and_stops_cleanly(
    make_site, tmp_path: Path, sig: int, extra: list[str]
) -> None:
    site, path = make_site()
    log = tmp_path / "out.txt"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *der_gateway(), "simulate", "--site", str(path), *extra,
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async def all_listen() -> bool:
                return all([await accepts(p) for p in ports(site)])

            await eventually(all_listen, timeout=30, what="every simulator port listening")
            if not extra:  # live mode: the table shows every device and the PCC
                await eventually(lambda: "PCC" in log.read_text(), timeout=10, what="the live table")
            proc.send_signal(sig)
            assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = log.read_text()
    pv1 = site.devices[0]
    assert text.startswith(f"simulating site {site.site.id}: pv1 (pv/ieee1547) 127.0.0.1:{pv1.port} unit 1")
    assert "simulators stopped" in text
    assert "Traceback" not in text
    assert not any([await accepts(p) for p in ports(site)])


async def test_a_large_site_is_summed_up_on_the_listening_line() -> None:
    site = example_site()
    extra = [site.devices[0].model_copy(update={"id": f"pvx{i}", "port": free_port()}) for i in range(20)]
    big = site.model_copy(update={"devices": [*site.devices, *extra]})
    line = _listening_line(SiteSimulator(big))
    assert f"and {len(big.devices) - LISTED_DEVICES} more (" in line
    assert "pvx19" not in line and line.count(" unit ") == LISTED_DEVICES
