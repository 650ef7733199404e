"""`der-gateway status`: the page's picture in a terminal, read from a running gateway's /api/status."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import tomli_w

from simulators.example_site import example_site
from simulators.mosquitto import free_port
from tests.support.rig import Rig
from tests.web.util import base_url

pytestmark = pytest.mark.asyncio


async def der_gateway(*args: str) -> tuple[int, str, str]:
    """The real command line in a process of its own (it blocks on HTTP: not in the rig's event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_shows_the_site_the_binding_limit_instructions_and_devices(web_rig: Rig,
                                                                                tmp_path: Path) -> None:
    rig = web_rig
    mark = await rig.send("ieso", "dispatch", "disp-s", product="energy", kind="algorithmic",
                          target_kw=150.0, start=0, end=600)
    await rig.send("ldc", "envelope", "env-s", export_limit_kw=100.0, reason="thermal", start=0, end=600)
    await rig.response("disp-s", "constrained", start=mark)
    await rig.telemetry(lambda t: t["effective"]["binding"] == "envelope:env-s", start=mark)

    code, out, err = await der_gateway("status", "--url", base_url(rig))
    assert code == 0, err
    lines = out.splitlines()
    assert any("site-001" in line and "der-gateway" in line for line in lines)
    export = next(line for line in lines if "Export limit" in line)
    assert "100.0 kW" in export and "set by LDC envelope env-s: export ≤ 100 kW (thermal)" in export
    assert "set by connection agreement" in next(line for line in lines if "Import limit" in line)
    assert "constrained" in next(line for line in lines if "Mode" in line)
    assert "IESO ok" in next(line for line in lines if "Comms" in line)
    disp = next(line for line in lines if "disp-s" in line and "dispatch" in line)
    assert "in force" in disp and "constrained" in disp and "DISTRIBUTION_CONSTRAINT" in disp
    for device in rig.site.devices:
        assert "online" in next(line for line in lines if f" {device.id} " in line)

    # The URL from the site file's [web] section
    site_file = tmp_path / "site.toml"
    site_file.write_text(tomli_w.dumps(rig.site.model_dump(mode="json", exclude_none=True)))
    code, out, err = await der_gateway("status", "--site", str(site_file))
    assert code == 0, err
    assert "env-s" in out


async def test_status_says_what_to_check_when_no_gateway_answers(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await der_gateway("status", "--url", url)
    assert code == 1 and out == ""
    assert f"cannot read {url}/api/status" in err and "[web] enabled = true" in err

    site_file = tmp_path / "site.toml"
    site_file.write_text(tomli_w.dumps(example_site().model_dump(mode="json", exclude_none=True)))
    code, out, err = await der_gateway("status", "--site", str(site_file))
    assert code == 1 and f"{site_file}: [web] is not enabled" in err
