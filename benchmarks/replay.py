"""Benchmark: telemetry replay after a broker outage (TDC-21), in messages per second.

A gateway's outbox is filled with N real telemetry messages (as after a long outage), then the gateway
starts against mosquitto and replays them. The rate is N over the time from the gateway's connection to
the broker having acknowledged (QoS 1) the last one; a subscriber checks that all N arrived, in order,
marked `replayed`.

    .venv/bin/python benchmarks/replay.py --messages 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gateway.app import Gateway
from gateway.north.mqtt import MqttPeer
from gateway.protocol.codec import encode_outbound
from gateway.store import Store
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto
from simulators.site import SiteSimulator

RESULTS = Path(__file__).resolve().parent / "results"


async def run(n: int, workdir: Path) -> dict:
    broker = Mosquitto(workdir)
    broker.start()
    site = example_site()
    sim = SiteSimulator(site)
    await sim.start()
    try:
        # one cycle of a real gateway gives a real telemetry message to copy N times
        probe = Gateway(site, broker.url)
        await asyncio.wait([p.start_read() for p in probe.pollers.values()], timeout=5)
        await probe.run_cycle()
        template = probe.telemetry(probe.snapshot.at)
        assert template is not None
        probe.store.close()
        store = Store(site.store.path, n + 10)
        for seq in range(1, n + 1):
            with store.transaction():
                store.outbox.put(seq, encode_outbound(replace(template, seq=seq), site.site.id)[1])
        store.close()

        async with MqttPeer(broker.url, client_id="replay-sub") as sub:
            await sub.subscribe(f"tdc/v1/{site.site.id}/gateway/telemetry")
            gateway = Gateway(site, broker.url)
            site.site.telemetry_interval_s = 3600.0  # only the backlog, no live telemetry
            task = asyncio.create_task(gateway.run())
            await gateway.mqtt.link.connected.wait()
            t0 = time.perf_counter()
            while gateway.store.outbox.depth() > 0:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            await sub.wait_for(lambda t, p: json.loads(p)["seq"] == n, timeout=60)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            got = [json.loads(p) for _, p, _ in sub.messages]
            in_order = [m["seq"] for m in got] == list(range(1, n + 1))
            return {"messages": n, "seconds": round(elapsed, 3), "per_second": round(n / elapsed),
                    "received_in_order": in_order, "all_replayed": all(m["replayed"] for m in got)}
    finally:
        await sim.stop()
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(run(args.messages, Path(tmp)))
    print(f"replay: {res['messages']} messages in {res['seconds']} s = {res['per_second']} msg/s; "
          f"in order: {res['received_in_order']}; all marked replayed: {res['all_replayed']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replay.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["received_in_order"] and res["all_replayed"] else 1


if __name__ == "__main__":
    sys.exit(main())
