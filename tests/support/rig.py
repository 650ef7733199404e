"""A whole site for integration tests: mosquitto, the device simulators, the gateway, and an MQTT peer
that speaks for the market side and the LDC. Everything on real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.app import Gateway
from gateway.config import SiteFile
from gateway.north.mqtt import MqttPeer
from simulators.site import SiteSimulator


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Rig:
    def __init__(self, site: SiteFile, broker_url: str) -> None:
        self.site = site
        self.url = broker_url
        self.prefix = f"tdc/v1/{site.site.id}/"
        self.sim = SiteSimulator(site)
        self.gateway: Gateway | None = None
        self._gw_task: asyncio.Task | None = None
        self.peer = MqttPeer(broker_url, client_id="test-peer")

    async def start(self, gateway: bool = True) -> None:
        await self.sim.start()
        await self.peer.__aenter__()
        await self.peer.subscribe(self.prefix + "gateway/#")
        if gateway:
            await self.start_gateway()

    async def start_gateway(self, prepare: Callable[[Gateway], None] | None = None) -> None:
        """`prepare`: called with the gateway before it runs (to add a service, say)."""
        self.gateway = Gateway(self.site, self.url)
        if prepare is not None:
            prepare(self.gateway)
        self._gw_task = asyncio.create_task(self.gateway.run())
        await self.wait_status(lambda s: s["state"] == "online")
        # the first control cycles have read every device
        def all_read(t: dict) -> bool:
            return all(d["online"] for d in t["devices"]) and t["site"]["p_kw"] is not None

        await self.telemetry(all_read, timeout=30)

    async def stop_gateway(self) -> None:
        if self._gw_task:
            self._gw_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gw_task
            self._gw_task = None

    async def stop(self) -> None:
        await self.stop_gateway()
        await self.peer.__aexit__(None, None, None)
        await self.sim.stop()

    # ---- talking as the market side or the LDC ---------------------------------------------------------
    def message(self, role: str, msg_type: str, msg_id: str, **fields: Any) -> dict[str, Any]:
        """A message with v, issuer and issued_at filled in; numeric start/end are seconds from now."""
        now = datetime.now(UTC)
        msg: dict[str, Any] = {"v": 1, "type": msg_type, "id": msg_id, "issuer": role, "issued_at": iso(now)}
        if msg_type == "dispatch":
            msg["resource_id"] = self.site.site.resource_id
        for k, v in fields.items():
            relative = k in ("start", "end") and isinstance(v, int | float)
            msg[k] = iso(now + timedelta(seconds=v)) if relative else v
        return msg

    async def publish(self, role: str, msg_type: str, payload: bytes | dict[str, Any]) -> int:
        """Publish on the site's inbound topic; returns the index of the next message the peer will see."""
        mark = len(self.peer.messages)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.peer.publish(f"{self.prefix}{role}/{msg_type}", body)
        return mark

    async def send(self, role: str, msg_type: str, msg_id: str, **fields: Any) -> int:
        return await self.publish(role, msg_type, self.message(role, msg_type, msg_id, **fields))

    # ---- observing ----------------------------------------------------------------------------------------
    async def _json(self, suffix: str, pred: Callable[[dict], bool], timeout: float, start: int) -> dict:
        topic = self.prefix + suffix

        def match(t: str, p: bytes) -> bool:
            return t == topic and pred(json.loads(p))

        _, payload = await self.peer.wait_for(match, timeout=timeout, start=start)
        return json.loads(payload)

    async def response(self, ref: str, status: str, role: str | None = None, timeout: float = 10.0,
                       start: int = 0) -> dict:
        roles = [role] if role else ["ieso", "ldc"]

        def match(t: str, p: bytes) -> bool:
            if not any(t == f"{self.prefix}gateway/response/{r}" for r in roles):
                return False
            body = json.loads(p)
            return body.get("ref") == ref and body.get("status") == status

        _, payload = await self.peer.wait_for(match, timeout=timeout, start=start)
        return json.loads(payload)

    def responses(self, ref: str, start: int = 0) -> list[dict]:
        out = []
        for t, p, _ in self.peer.messages[start:]:
            if t.startswith(self.prefix + "gateway/response/"):
                body = json.loads(p)
                if body.get("ref") == ref:
                    out.append(body)
        return out

    async def telemetry(self, pred: Callable[[dict], bool] = lambda t: True, timeout: float = 20.0,
                        start: int = 0) -> dict:
        return await self._json("gateway/telemetry", pred, timeout, start)

    async def wait_status(self, pred: Callable[[dict], bool], timeout: float = 20.0, start: int = 0) -> dict:
        return await self._json("gateway/status", pred, timeout, start)

    async def wait_meter(self, pred: Callable[[float], bool], timeout: float = 20.0) -> float:
        """Poll the simulated PCC meter until `pred(p_kw)` holds; raises TimeoutError with the last value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            p = self.sim.meter_p_kw
            if pred(p):
                return p
            if loop.time() > deadline:
                raise TimeoutError(f"meter condition not met within {timeout} s; PCC is {p:.1f} kW")
            await asyncio.sleep(0.1)
