"""`der-gateway demo`: a whole simulated site, the gateway, and a scenario played by the market side and LDC.

Everything runs in this one process on loopback sockets: an embedded MQTT broker (unless --broker is
given), the device simulators on their Modbus ports, the gateway, and the scenario player. It prints
what the gateway reports every second and ends with a verdict per step and a plot of the run (PNG).
The gateway's status page is on while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
from pathlib import Path

from gateway.app import Gateway
from gateway.config import LdcSection, Sep2Section, SiteFile, StoreSection, WebSection
from gateway.demo_report import Timeline, write_report
from simulators.embedded_broker import EmbeddedBroker
from simulators.mosquitto import free_port
from simulators.scada_master import scenario_actions
from simulators.sep2_certs import make_pki
from simulators.sep2_server import Sep2Server, sep2_actions
from simulators.site import SiteSimulator
from simulators.upstream import ScenarioPlayer, Verdict, load_scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _free_port(site: SiteFile) -> int:
    """A free loopback port the site file does not name: the site's own ports are not yet bound when the
    broker and the status page pick theirs (the simulators and the SCADA outstation start later), so
    the OS could hand one of them out."""
    return free_port(avoid={d.port for d in site.devices} | {site.scada.port, site.web.port})


def _describe_site(site: SiteFile) -> str:
    s = site.site
    lines = [
        f"Site {s.id} ({s.name or 'unnamed'}), resource {s.resource_id}",
        f"  connection agreement: export ≤ {s.export_cap_kw:.0f} kW, import ≤ {s.import_cap_kw:.0f} kW; "
        f"default envelope (LDC link lost): export ≤ {s.default_envelope.export_limit_kw} kW",
        f"  site load {site.simulator.load_kw:.0f} ± {site.simulator.load_variation_kw:.0f} kW "
        "(not controlled)",
    ]
    for d in site.devices:
        size = f"{d.sim.rated_kw:.0f} kW" if d.kind != "meter" else "PCC, + = export"
        variant = f" {d.sim.variant}" if d.kind == "pv" and d.protocol == "sunspec" else ""
        link = (f"DNP3 {d.host}:{d.port} outstation {d.outstation_address}" if d.protocol == "dnp3"
                else f"SunSpec Modbus {d.host}:{d.port} unit {d.unit_id}")
        lines.append(f"  {d.id:<6} {d.kind:<8}{variant:<9} {size:<16} {link}")
    if site.scada.enabled:
        lines.append(f"  LDC SCADA: DNP3 outstation {site.scada.outstation_address} at "
                     f"{site.scada.host}:{site.scada.port} (master {site.scada.master_address})")
    return "\n".join(lines)


async def _start_sep2(site: SiteFile) -> Sep2Server:
    """The LDC's 2030.5 server, on a fresh test PKI, polled every second; the site set to use it (the
    LDC's MQTT envelopes still count; its default envelope is the server's DefaultDERControl)."""
    pki = make_pki(Path(tempfile.mkdtemp(prefix="der-gateway-demo-pki-")))
    server = Sep2Server(pki, port=_free_port(site))
    for resource in ("dcap", "edevl", "fsal", "derpl", "derl"):
        server.set_poll_rate(resource, 1)
    server.multiplier = 1  # as envoy encodes site controls: tens of W
    await server.start()
    site.sep2 = Sep2Section(enabled=True, server=server.dcap_url, ca=pki.ca_cert, cert=pki.client_cert,
                            key=pki.client_key)
    site.ldc = LdcSection(default_envelope="sep2")
    return server


def _report(verdicts: list[Verdict]) -> str:
    lines = ["", "Verdict per step:"]
    for n, v in enumerate(verdicts, 1):
        lines.append(f"  {'MET    ' if v.met else 'NOT MET'}  {n}. {v.step}\n             {v.detail}")
    met = sum(v.met for v in verdicts)
    lines.append(f"\n{met} of {len(verdicts)} steps met.")
    return "\n".join(lines)


def _web_port(site: SiteFile) -> int:
    """The site's web port, or a free one if something (another demo?) already listens there."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", site.web.port))
        except OSError:
            return _free_port(site)
    return site.web.port


async def run_demo(site: SiteFile, scenario: Path, broker_url: str | None, report: Path) -> int:
    # Print a line a second, so the player sees every cycle's effect.
    site.site.telemetry_interval_s = 1.0
    # A fresh store every run: the scenario's ids are the same each time, and a kept store would answer
    # them DUPLICATE_ID (TDC-06) and start with the last run's instructions in force.
    site.store = StoreSection(path=Path(tempfile.mkdtemp(prefix="der-gateway-demo-")) / "gateway.sqlite")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(_describe_site(site))
    broker = None
    if broker_url is None:
        broker = EmbeddedBroker(port=_free_port(site))
        await broker.start()
        broker_url = broker.url
        print(f"MQTT: embedded broker at {broker_url} (use --broker mqtt://HOST:PORT for your own)")
    if not site.web.enabled:
        site.web = WebSection(enabled=True, port=_web_port(site))
    print(f"Status page: http://{site.web.host}:{site.web.port}/ (also /metrics; or `der-gateway status "
          f"--url http://{site.web.host}:{site.web.port}`)")
    sep2 = await _start_sep2(site)
    print(f"IEEE 2030.5: utility-server simulator at {sep2.dcap_url} (mutual TLS, CSIP-AUS 1.2); the LDC's "
          "default envelope comes by 2030.5")
    sim = SiteSimulator(site)
    await sim.start()
    gateway = Gateway(site, broker_url)
    gw_task = asyncio.create_task(gateway.run())
    timeline = Timeline()
    # The scenario's SCADA steps, through a dnp3py master (PROTOCOL §9); its 2030.5 steps, by the
    # utility-server simulator the gateway polls.
    scada, actions = scenario_actions(site)
    actions.update(sep2_actions(sep2))
    try:
        player = ScenarioPlayer(broker_url, site.site.id, site.site.resource_id, actions=actions,
                                tolerance_kw=max(5.0, 2 * site.site.target_tolerance_kw),
                                on_step=timeline.on_step, on_telemetry=timeline.on_telemetry)
        verdicts = await player.play(load_scenario(scenario))
    finally:
        await scada.close()
        gw_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gw_task
        await sim.stop()
        await sep2.stop()
        if broker:
            await broker.stop()
    print(_report(verdicts))
    write_report(timeline, report, f"der-gateway demo: site {site.site.id}, scenario {scenario.name}")
    print(f"Report: {report.resolve()}")
    return 0 if all(v.met for v in verdicts) else 1


def demo(site: SiteFile, scenario: Path, broker_url: str | None, report: Path) -> int:
    return asyncio.run(run_demo(site, scenario, broker_url, report))
