"""The gateway's HTTP face, the one module that uses aiohttp: the status page (`/`), its data
(`/api/status`, also read by `der-gateway status`) and Prometheus metrics (`/metrics`).

`attach_web(gateway)` wires it when the site file's `[web]` is enabled: the chart's history and the
metrics as cycle listeners, the poll and outbound hooks, and the server as one of the gateway's
services. The server only reads the gateway; it never changes what the gateway decides.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.metrics import Metrics
from gateway.web.history import History
from gateway.web.page import render_page
from gateway.web.status import status_view

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, gateway: Gateway, history: History, metrics: Metrics) -> None:
        self.gateway, self.history, self.metrics = gateway, history, metrics
        cfg = gateway.site.web
        self.host, self.port = cfg.host, cfg.port
        self.app = web.Application()
        self.app.router.add_get("/", self._page)
        self.app.router.add_get("/api/status", self._status)
        self.app.router.add_get("/metrics", self._metrics)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def _page(self, request: web.Request) -> web.Response:
        view = status_view(self.gateway, self.history, datetime.now(UTC), since=0.0)
        return web.Response(text=render_page(view), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _status(self, request: web.Request) -> web.Response:
        """`?since=T` adds the chart's points after T (UTC epoch seconds; 0 for the whole hour)."""
        raw = request.query.get("since")
        try:
            since = None if raw is None else float(raw)
        except ValueError:
            raise web.HTTPBadRequest(text="since must be a number (UTC epoch seconds)") from None
        return web.json_response(status_view(self.gateway, self.history, datetime.now(UTC), since),
                                 headers={"Cache-Control": "no-store"})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def serve(self) -> None:
        """Listen until cancelled. A port that cannot be had turns the page off, not the gateway:
        control must go on without it."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, self.host, self.port).start()
            except OSError as err:
                log.error("web: cannot listen on %s:%d (%s); the status page and /metrics are off. "
                          "Free the port or set [web] port in the site file.", self.host, self.port, err)
                return
            log.info("web: status page at %s, metrics at %smetrics", self.url, self.url)
            await asyncio.Event().wait()
        finally:
            # Shielded: the gateway cancels its tasks once more while they wind down, and a cleanup cut
            # short would leave the port open and its connections unanswered.
            await asyncio.shield(runner.cleanup())


def attach_web(gateway: Gateway) -> WebServer:
    history = History(gateway.interval_s)
    metrics = Metrics(gateway)
    gateway.cycle_listeners += [history.on_cycle, metrics.on_cycle]
    gateway.inbound_listeners.append(metrics.on_inbound)
    gateway.on_cycle_time = metrics.on_cycle_time
    for poller in gateway.pollers.values():
        poller.on_read = metrics.on_read
    server = WebServer(gateway, history, metrics)
    gateway.services.append(server.serve)
    return server
