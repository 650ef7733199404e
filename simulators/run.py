"""`der-gateway simulate --site FILE`: serve the site's simulated devices until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TextIO

from gateway.config import SiteFile
from simulators.site import SiteSimulator

REFRESH_S = 1.0


def run_simulate(site: SiteFile, live: bool) -> int:
    """Start every simulator, say what listens where, optionally show a live table; 0 on a clean stop."""
    return asyncio.run(_simulate(site, live, sys.stdout))


async def _simulate(site: SiteFile, live: bool, out: TextIO) -> int:
    sim = SiteSimulator(site)
    try:
        await sim.start()
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(_listening_line(sim), file=out, flush=True)
        table = _LiveTable(out)
        while not stop.is_set():
            if live:
                table.show(sim)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_S)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sim.stop()
    print("simulators stopped", file=out, flush=True)
    return 0


LISTED_DEVICES = 12  # a larger site is summed up: a thousand endpoints on one line help nobody


def _listening_line(sim: SiteSimulator) -> str:
    parts = []
    devices = sim.site.devices
    for cfg in devices[:LISTED_DEVICES]:
        variant = f"/{cfg.sim.variant}" if cfg.kind == "pv" else ""
        parts.append(f"{cfg.id} ({cfg.kind}{variant}) {cfg.host}:{cfg.port} unit {cfg.unit_id}")
    if len(devices) > LISTED_DEVICES:
        rest = devices[LISTED_DEVICES:]
        kinds = ", ".join(f"{sum(d.kind == k for d in rest)} {k}" for k in sorted({d.kind for d in rest}))
        parts.append(f"and {len(rest)} more ({kinds}; every endpoint in the site file)")
    control = sim.site.simulator.control_port
    tail = f"; control socket 127.0.0.1:{control}" if control else ""
    return f"simulating site {sim.site.site.id}: " + ", ".join(parts) + tail + " — Ctrl-C to stop"


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


class _LiveTable:
    """A compact table, redrawn in place on a terminal and appended otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lines = 0
        self._tty = out.isatty()

    def show(self, sim: SiteSimulator) -> None:
        rows = [f"{'device':<10} {'kind':<8} {'kW':>8} {'kvar':>8} {'SoC %':>6} {'conn':>5} {'limit %':>8}"
                "  fault"]
        for name, dev in sim.devices.items():
            if dev is sim.meter:
                continue
            soc, limit = _cell(dev.soc_pct, ".1f"), _cell(dev.active_limit_pct, ".1f")
            rows.append(
                f"{name:<10} {dev.kind:<8} {dev.p_kw:>8.1f} {dev.q_kvar:>8.1f} {soc:>6} "
                f"{'yes' if dev.connected else 'no':>5} {limit:>8}  {dev.fault}"
            )
        rows.append(
            f"PCC {sim.meter_p_kw:+.1f} kW (+ = export) = DER {sim.der_p_kw:.1f} kW"
            f" - load {sim.load_kw:.1f} kW   irradiance {sim.irradiance_pu:.2f} pu"
            f"   meter fault {sim.meter.fault}"
        )
        if self._tty and self._lines:
            self.out.write(f"\x1b[{self._lines}F\x1b[J")  # back to the table's first line, clear below
        self.out.write("\n".join(rows) + "\n")
        self.out.flush()
        self._lines = len(rows)
