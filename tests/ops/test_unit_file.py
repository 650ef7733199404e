"""deploy/der-gateway.service: its command line, with this checkout's paths put in, starts the gateway as
systemd would, which logs JSON lines on stdout and comes online on the broker (retained status)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import SiteFile
from gateway.north.mqtt import MqttPeer
from simulators.mosquitto import Mosquitto, free_port
from simulators.site import SiteSimulator

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "der-gateway.service"
INSTALLED = {  # where docs/install.md puts things, and where this test puts them instead
    "/opt/der-gateway/venv/bin/der-gateway": str(Path(sys.executable).parent / "der-gateway"),
}


def service_section(text: str) -> dict[str, list[str]]:
    """[Service] keys → values (a key may repeat, as Environment= does)."""
    out: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_file_is_valid_for_systemd(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / UNIT.name
    text = UNIT.read_text()
    for installed, here in INSTALLED.items():
        text = text.replace(installed, here)
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.asyncio
async def test_unit_command_line_starts_the_gateway(make_site: Callable[..., tuple[SiteFile, Path]],
                                                    tmp_path: Path) -> None:
    service = service_section(UNIT.read_text())
    state_dir = tmp_path / "var-lib-der-gateway"  # StateDirectory=, which systemd would create
    state_dir.mkdir()
    broker = Mosquitto(tmp_path)
    broker.start()
    site, site_file = make_site(mqtt={"broker": broker.url}, scada={"port": free_port()},
                                store={"path": str(state_dir / "gateway.sqlite")})
    paths = {**INSTALLED, "/etc/der-gateway/site.toml": str(site_file)}
    argv = [paths.get(arg, arg) for arg in shlex.split(service["ExecStart"][0])]
    assert argv[1:3] == ["run", "--site"] and Path(argv[0]).exists()
    env = {**os.environ, **dict(e.split("=", 1) for e in service.get("Environment", [])),
           "INVOCATION_ID": "0123456789abcdef"}  # as systemd sets it for its services
    assert service["WorkingDirectory"] == ["/var/lib/der-gateway"]
    sim = SiteSimulator(site)
    await sim.start()
    proc = subprocess.Popen(argv, cwd=state_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with MqttPeer(broker.url) as peer:
            await peer.subscribe(f"tdc/v1/{site.site.id}/gateway/status")

            def online(status: dict[str, Any]) -> bool:
                n = len(site.devices)
                return status["state"] == "online" and status["devices"] == {"online": n, "total": n}

            _, payload = await peer.wait_for(lambda t, p: online(json.loads(p)), timeout=30)
            assert json.loads(payload)["site_id"] == site.site.id
        async with MqttPeer(broker.url) as late:  # a newcomer gets it too: it is retained
            await late.subscribe(f"tdc/v1/{site.site.id}/gateway/status")
            await late.wait_for(lambda t, p: True, timeout=10)
            assert late.messages[0][2] and json.loads(late.messages[0][1])["state"] == "online"
        assert (state_dir / "gateway.sqlite").exists()
    finally:
        proc.send_signal(signal.SIGTERM)  # what `systemctl stop` sends
        out, err = proc.communicate(timeout=20)
        await sim.stop()
        broker.stop()
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]  # every line is a JSON object
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert any(line["msg"].startswith("der-gateway ") and "starting" in line["msg"] for line in lines)
    assert any("mqtt: connected" in line["msg"] for line in lines)
    assert err == b""  # nothing escapes the JSON log on stderr
