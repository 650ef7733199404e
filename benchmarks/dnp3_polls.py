"""Benchmark: integrity polls per second that the gateway's LDC SCADA outstation serves, beside a bare
opendnp3 outstation with the same point count, in the same run.

Each part runs in its own process, as on a real box: mosquitto, the example site's simulated devices
(`der-gateway simulate`), the gateway (`der-gateway run`, [scada] enabled: its points are set every
control cycle from live data and every request is a sign of life of the LDC link), and a bare outstation
(`dnp3_polls.py --bare PORT`: opendnp3 with the same point count, never updated). This process is the
master (opendnp3; values decoded but not handed to Python, so the master is not what is measured): back-to-
back integrity polls (class 0, 1, 2, 3) for --seconds against each outstation in turn, --rounds times.

    .venv/bin/python benchmarks/dnp3_polls.py --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from gateway.dnp3.opendnp3_stack import Dnp3Error, MasterStack, OutstationStack
from gateway.north.scada_map import load_point_list
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto, free_port

AI_DEVICES_TOTAL, AI_DEVICES_ONLINE = 28, 1017


def _master(port: int, keep_values: bool) -> MasterStack:
    return MasterStack(name=f"bench-{port}", host="127.0.0.1", port=port, address=1, outstation_address=10,
                       response_timeout_s=5.0, keep_values=keep_values)


async def wait_ready(port: int, timeout: float) -> None:
    """The gateway's outstation answers and reports every device online."""
    m = _master(port, keep_values=True)
    m.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                await m.poll(integrity=True)
                a = m.analogs
                if a.get(AI_DEVICES_TOTAL) and a.get(AI_DEVICES_ONLINE) == a.get(AI_DEVICES_TOTAL):
                    return
            except Dnp3Error:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway's outstation did not report every device online")
            await asyncio.sleep(0.5)
    finally:
        m.stop()


async def polls_per_s(master: MasterStack, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        await master.poll(integrity=True)
        n += 1
    return n / elapsed


async def measure(ports: dict[str, int], seconds: float, rounds: int) -> dict[str, list[float]]:
    masters = {name: _master(port, keep_values=False) for name, port in ports.items()}
    for m in masters.values():
        m.start()
    try:
        for m in masters.values():  # warm up: link up, startup tasks done
            for _ in range(20):
                await m.poll(integrity=True)
        results: dict[str, list[float]] = {name: [] for name in masters}
        for r in range(rounds):
            for name, m in masters.items():
                rate = await polls_per_s(m, seconds)
                results[name].append(rate)
                print(f"  round {r + 1}: {name:<22} {rate:8.0f} integrity polls/s", flush=True)
        return results
    finally:
        for m in masters.values():
            m.stop()


async def serve_bare(port: int) -> None:
    """A bare opendnp3 outstation with the gateway's point count: no commands, no updates."""
    stack = OutstationStack(name="bare", host="127.0.0.1", port=port, address=10, master_address=1,
                            point_count=load_point_list().point_count, check=lambda cmd: "NOT_SUPPORTED",
                            on_operate=lambda cmd: None, on_request=lambda: None)
    stack.start()
    try:
        await asyncio.Event().wait()
    finally:
        stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bare", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the bare outstation process
    args = ap.parse_args()
    if args.bare:
        asyncio.run(serve_bare(args.bare))
        return

    tmp = Path(tempfile.mkdtemp(prefix="dnp3-bench-"))
    broker = Mosquitto(tmp)
    broker.start()
    site = example_site(comms_timeout_s=3600.0)
    site_file = tmp / "site.toml"
    site_file.write_text(tomli_w.dumps(site.model_dump(mode="json", exclude_none=True)))
    bare_port = free_port()
    cli = [sys.executable, "-m", "gateway.cli"]
    procs = [
        subprocess.Popen([*cli, "simulate", "--site", str(site_file), "--quiet"], stdout=subprocess.DEVNULL),
        subprocess.Popen([*cli, "run", "--site", str(site_file), "--broker", broker.url,
                          "--log-level", "warning"]),
        subprocess.Popen([sys.executable, __file__, "--bare", str(bare_port)]),
    ]
    try:
        asyncio.run(wait_ready(site.scada.port, timeout=60))
        points = load_point_list().point_count
        print(f"Integrity polls (class 0, 1, 2, 3) of {points} binary inputs, analog inputs and output "
              f"status points each, {args.seconds:g} s per measurement:")
        ports = {"gateway outstation": site.scada.port, "bare opendnp3": bare_port}
        results = asyncio.run(measure(ports, args.seconds, args.rounds))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        broker.stop()
    gw, bare = (statistics.median(results[k]) for k in ports)
    print(f"\nmedian: gateway outstation {gw:.0f} polls/s, bare opendnp3 {bare:.0f} polls/s "
          f"({100 * gw / bare:.0f} % of bare)")


if __name__ == "__main__":
    main()
