"""Prometheus metrics of one gateway, served at /metrics by `gateway.web.server`.

Each gateway has its own registry (not prometheus_client's global one), so several gateways in one
process (tests, the demo) never share or clash over a metric. Counters and the last decision are fed by
hooks: `on_cycle` (a cycle listener), `on_cycle_time` (each cycle's duration), `on_read` (each device
poll) and `on_inbound` (the answers to each inbound message). Values that only matter when someone
looks — device states, outbox and MQTT queue depth, audit records, uptime — are read from the gateway
at scrape time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.core.engine import Cycle
from gateway.core.model import DeviceReading, Inbound, Invalid, MeterReading
from gateway.core.outbound import Outbound, Response
from gateway.south.device import Device, DeviceError, DeviceFault, Reading
from gateway.store.health import StoreHealth
from gateway.web.history import metered_pcc_kw

if TYPE_CHECKING:
    from gateway.app import Gateway

MODES = ("normal", "constrained", "overridden", "failsafe")
# Modbus reads on a LAN take milliseconds; a device near its timeout (1 s by default) lands in the top
# buckets.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)


def binding_kind(binding: str) -> str:
    """`envelope:env-1` → `envelope`: instruction ids would give a label value per instruction."""
    return binding.partition(":")[0]


class Metrics:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = r = CollectorRegistry()
        Info("der_gateway", "Version and site of this gateway", registry=r).info(
            {"version": __version__, "site_id": gateway.site.site.id})
        self.poll_seconds = Histogram("der_gateway_device_poll_seconds",
                                      "Duration of one device read that was attempted (reconnects included)",
                                      ["device"], buckets=POLL_BUCKETS, registry=r)
        self.cycle_seconds = Histogram("der_gateway_control_cycle_seconds",
                                       "Duration of one control cycle: read every device, decide, hand out "
                                       "the writes (more than control_interval_s is an overrun)",
                                       buckets=CYCLE_BUCKETS, registry=r)
        self.poll_errors = Counter("der_gateway_device_poll_errors",
                                   "Device reads that failed: offline (no answer) or fault (refused)",
                                   ["device", "error"], registry=r)
        self.decisions = Counter("der_gateway_decisions",
                                 "Control cycles (a decision each) by the kind of source that set the target",
                                 ["binding"], registry=r)
        self.export_binding = Counter("der_gateway_export_limit_decisions",
                                      "Control cycles by the kind of source that set the export limit",
                                      ["binding"], registry=r)
        self.responses = Counter("der_gateway_responses", "Responses sent, by issuer role and status",
                                 ["role", "status"], registry=r)
        self.pcc_kw = Gauge("der_gateway_pcc_kw",
                            "Metered PCC power, + = export (NaN without a usable meter)", registry=r)
        self.target_kw = Gauge("der_gateway_target_kw", "Decided PCC target", registry=r)
        self.export_limit_kw = Gauge("der_gateway_export_limit_kw", "PCC export limit in force", registry=r)
        self.import_limit_kw = Gauge("der_gateway_import_limit_kw", "PCC import limit in force", registry=r)
        self.mode = Enum("der_gateway_mode", "Operating mode", states=list(MODES), registry=r)
        self._scrape_time = _ScrapeTime(gateway)
        r.register(self._scrape_time)

    async def render(self) -> bytes:
        """The text exposition. At 1,000 devices it takes 100-200 ms (a histogram per device): rendered in
        a thread, so that the event loop (an instruction's receipt) waits ~5 ms at a time, not all of it.
        What is read from the gateway is taken first, on the loop."""
        self._scrape_time.take()
        return await asyncio.to_thread(generate_latest, self.registry)

    # ---- hooks ---------------------------------------------------------------------------------------
    def on_cycle(self, cycle: Cycle, meter: MeterReading | None, devices: list[DeviceReading]) -> None:
        d = cycle.decision
        self.decisions.labels(binding_kind(d.binding)).inc()
        self.export_binding.labels(binding_kind(d.export_binding)).inc()
        pcc = metered_pcc_kw(meter)
        self.pcc_kw.set(math.nan if pcc is None else pcc)
        self.target_kw.set(d.target_kw)
        self.export_limit_kw.set(d.export_limit_kw)
        self.import_limit_kw.set(d.import_limit_kw)
        self.mode.state(cycle.mode)
        self._count(cycle.outbound)

    def on_cycle_time(self, seconds: float) -> None:
        self.cycle_seconds.observe(seconds)

    def on_read(self, device: Device, reading: Reading | None, seconds: float,
                error_before: DeviceError | None) -> None:
        """After one `device.read()`. An offline device waiting out its backoff returns None without
        asking the device: that is no poll, and its ~0 s would hide real latency."""
        if reading is None and device.last_error is error_before:
            return
        self.poll_seconds.labels(device.id).observe(seconds)
        if reading is None:
            kind = "fault" if isinstance(device.last_error, DeviceFault) else "offline"
            self.poll_errors.labels(device.id, kind).inc()

    def on_inbound(self, msg: Inbound | Invalid, outs: list[Outbound]) -> None:
        self._count(outs)

    def _count(self, outs: list[Outbound]) -> None:
        for out in outs:
            if isinstance(out, Response):
                self.responses.labels(out.role, out.status).inc()


class _ScrapeTime(Collector):
    """Gauges read from the gateway when /metrics is scraped: taken on the event loop (`take`), collected
    in the rendering thread."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._taken: list[Metric] = []

    def take(self) -> None:
        self._taken = list(self._read())

    def collect(self) -> Iterator[Metric]:
        return iter(self._taken)

    def _read(self) -> Iterator[Metric]:
        gw = self.gateway
        online = GaugeMetricFamily("der_gateway_device_online", "1 while the device answers its reads",
                                   labels=["device", "kind"])
        stale = GaugeMetricFamily("der_gateway_device_stale",
                                  "1 when the device's last good reading is too old to use",
                                  labels=["device"])
        for dev_id, poller in gw.pollers.items():
            online.add_metric([dev_id, poller.device.kind], float(poller.device.online))
            stale.add_metric([dev_id], float(poller.device.stale))
        yield online
        yield stale
        yield GaugeMetricFamily("der_gateway_uptime_seconds", "Seconds since the gateway started",
                                value=time.monotonic() - gw.started)
        restarts = CounterMetricFamily("der_gateway_task_restarts",
                                       "Times a task of the gateway failed and was restarted",
                                       labels=["task"])
        for name, failure in sorted(gw.supervisor.failures.items()):
            restarts.add_metric([name], failure.count)
        yield restarts
        # The store (outbox and audit log) is optional: without one these metrics are absent, not 0.
        store = getattr(gw, "store", None)
        outbox = getattr(store, "outbox", None)
        if outbox is not None:
            yield GaugeMetricFamily("der_gateway_outbox_depth",
                                    "Telemetry messages stored and not yet acknowledged by the broker",
                                    value=outbox.depth())
        link = getattr(getattr(gw, "mqtt", None), "link", None)
        if link is not None:
            yield GaugeMetricFamily("der_gateway_mqtt_queue_depth",
                                    "Answers and status messages queued, not yet acknowledged by the broker",
                                    value=link.outgoing.depth)
            yield CounterMetricFamily("der_gateway_mqtt_queue_dropped",
                                      "Answers and status messages dropped, oldest first, because the queue "
                                      "was full (mqtt.max_queued_messages) while the broker did not answer",
                                      value=link.outgoing.dropped)
        audit = getattr(store, "audit", None)
        if audit is not None:
            yield CounterMetricFamily("der_gateway_audit_records", "Records appended to the audit log",
                                      value=audit.count)
        journal = getattr(gw, "journal", None)
        if journal is not None:
            yield GaugeMetricFamily("der_gateway_store_queued_jobs",
                                    "Writes handed to the store's writer thread and not yet started",
                                    value=journal.writer.queued)
            yield from _store_health(journal.health)


def _store_health(health: StoreHealth) -> Iterator[Metric]:
    yield GaugeMetricFamily("der_gateway_store_room_bytes",
                            "Room left for the store: its file system's free space, or less where SQLite's "
                            "page limit says so (NaN until measured)",
                            value=math.nan if health.room is None else float(health.room))
    yield GaugeMetricFamily("der_gateway_store_low", "1 while the room left is under store.min_free_mb",
                            value=float(health.low))
    yield GaugeMetricFamily("der_gateway_store_writable",
                            "0 while the store cannot be written (market instructions are refused)",
                            value=float(health.writable))
    yield CounterMetricFamily("der_gateway_store_failed_writes",
                              "Store transactions that could not be written (full disk, I/O error)",
                              value=health.failed_writes)
    unstored = CounterMetricFamily("der_gateway_store_unstored",
                                   "Audit records and telemetry messages that could not be stored",
                                   labels=["what"])
    for what in ("audit", "telemetry"):
        unstored.add_metric([what], sum(n for k, n in health.unstored.items() if k.startswith(what)))
    yield unstored
