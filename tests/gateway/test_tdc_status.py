"""TDC-24: status is retained, and the MQTT last will marks the gateway offline when it dies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from gateway.north.mqtt import MqttPeer
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio


async def test_tdc_24_status_is_retained_for_a_new_subscriber(rig: Rig) -> None:
    async with MqttPeer(rig.url) as late:
        await late.subscribe(rig.prefix + "gateway/status")
        await late.wait_for(lambda t, p: True, timeout=10)
        _topic, payload, retained = late.messages[0]
        assert retained
        status = json.loads(payload)
        assert status["state"] == "online"
        assert status["site_id"] == rig.site.site.id
        assert status["devices"] == {"online": 5, "total": 5}
        assert set(status["comms"]) == {"ieso", "ldc"}


async def test_tdc_24_last_will_marks_a_killed_gateway_offline(make_rig, tmp_path: Path) -> None:
    rig: Rig = await make_rig(gateway=False)
    site_file = tmp_path / "site.toml"
    site_file.write_text(tomli_w.dumps(rig.site.model_dump(mode="json", exclude_none=True)))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--site", str(site_file),
                             "--broker", rig.url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        mark = len(rig.peer.messages)
        await rig.wait_status(lambda s: s["state"] == "online", start=mark, timeout=30)
        mark = len(rig.peer.messages)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        status = await rig.wait_status(lambda s: s["state"] == "offline", start=mark, timeout=30)
        assert status["site_id"] == rig.site.site.id
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
