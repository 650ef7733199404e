"""The simulators' control socket (JSON lines over TCP) and a tiny asyncio client for it.

One JSON object per line each way; every request gets exactly one reply line, in order:

    {"cmd": "state"}                                    → {"ok": true, "state": {...all devices...}}
    {"cmd": "site"}                                     → {"ok": true, "site": {irradiance, load, DER, meter}}
    {"cmd": "fault", "device": "pv1", "mode": "silent"} → {"ok": true}
        modes: none | silent | exception (+ "code", default 4) | slow (+ "delay_s", default 2)
               | reboot (+ "duration_s", default 3)
               | stuck (answers, takes writes, output does not follow them; not the meter)
               | nan (measurements read NaN or the closest the type has) | garbage (random measurements)
               | bad_sf (+ "sf", default 32767: every scale factor outside -10…10)
    {"cmd": "irradiance", "pu": 0.5}                    → {"ok": true}
    {"cmd": "load", "kw": 100}                          → {"ok": true}
    anything wrong                                      → {"ok": false, "error": "..."}

It listens on 127.0.0.1 only: it can break devices, so it is not for the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulators.site import SiteSimulator

CONTROL_HOST = "127.0.0.1"
_FAULT_OPTS = ("code", "delay_s", "duration_s", "sf")


class ControlError(Exception):
    """The simulator refused a control command; the message says why."""


class ControlServer:
    def __init__(self, site: SiteSimulator, port: int, host: str = CONTROL_HOST) -> None:
        self.site = site
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's Server.close() leaves accepted connections open: close them ourselves.
        for writer in list(self._clients):
            writer.close()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while line := await reader.readline():
                writer.write(json.dumps(self.handle(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("a request is a JSON object")
            return {"ok": True, **self._dispatch(msg)}
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            return {"ok": False, "error": str(err) or type(err).__name__}

    def _dispatch(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        if cmd == "state":
            return {"state": self.site.state()}
        if cmd == "site":  # cheap enough to sample often, whatever the number of devices
            return {"site": self.site.site_state()}
        if cmd == "irradiance":
            self.site.set_irradiance(float(msg["pu"]))
            return {}
        if cmd == "load":
            self.site.set_load(float(msg["kw"]))
            return {}
        if cmd == "fault":
            name = msg.get("device")
            if name not in self.site.devices:
                raise ValueError(f"unknown device {name!r}; devices: {', '.join(self.site.devices)}")
            opts = {k: msg[k] for k in _FAULT_OPTS if k in msg}
            for key in ("code", "sf"):
                if key in opts:
                    opts[key] = int(opts[key])
            self.site.devices[name].set_fault(str(msg.get("mode")), **opts)
            return {}
        raise ValueError(f"unknown cmd {cmd!r}; one of state, site, fault, irradiance, load")


REPLY_LIMIT = 64 * 1024 * 1024


class ControlClient:
    """`async with ControlClient(port) as c: await c.fault("pv1", "silent"); s = await c.state()`."""

    def __init__(self, port: int, host: str = CONTROL_HOST) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        # a whole site's state is one line: 1,000 devices with their write times exceed asyncio's 64 KiB
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=REPLY_LIMIT)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def __aenter__(self) -> ControlClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command; return the reply, or raise ControlError if the simulator refused it."""
        if self._reader is None or self._writer is None:
            raise RuntimeError("not connected: use `async with ControlClient(...)` or connect()")
        async with self._lock:  # one request in flight: replies come back in order
            self._writer.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            await self._writer.drain()
            line = await self._reader.readline()
        if not line:
            raise ConnectionError("the simulator closed the control connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "refused"))
        return reply

    async def state(self) -> dict[str, Any]:
        return (await self.request("state"))["state"]

    async def site(self) -> dict[str, Any]:
        """Irradiance, load, total DER output and the PCC meter, without the devices."""
        return (await self.request("site"))["site"]

    async def fault(self, device: str, mode: str, **opts: float) -> None:
        await self.request("fault", device=device, mode=mode, **opts)

    async def irradiance(self, pu: float) -> None:
        await self.request("irradiance", pu=pu)

    async def load(self, kw: float) -> None:
        await self.request("load", kw=kw)
