"""Benchmark: instruction → `received` response, and instruction → every device written, at N devices.

Every part runs as on a real box, each in its own process: mosquitto, the simulated devices
(`der-gateway simulate`), and the gateway (`der-gateway run`). This process plays the market side: it
publishes a dispatch, times the `received` response that comes back, and reads from the simulators
(control socket) when each device's registers were last written. Targets alternate so that every
device's setpoint changes each round. Devices are PV inverters of 10 kW, all curtailed, so a new PCC
target changes every inverter's limit.

    .venv/bin/python benchmarks/latency.py --devices 10 100 --rounds 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from gateway.north.mqtt import MqttPeer
from simulators.control import ControlClient
from simulators.mosquitto import Mosquitto, free_port

RESULTS = Path(__file__).resolve().parent / "results"


def site_dict(n: int, control_port: int) -> dict:
    devices = [{"id": f"pv{i:04d}", "kind": "pv", "port": free_port(), "reversion_timeout_s": 600.0,
                "sim": {"rated_kw": 10.0, "variant": "ieee1547"}} for i in range(n)]
    devices.append({"id": "meter", "kind": "meter", "port": free_port()})
    return {
        "site": {"id": "bench", "resource_id": "BENCH-1", "export_cap_kw": 10.0 * n,
                 "import_cap_kw": 10.0 * n, "telemetry_interval_s": 1.0, "comms_timeout_s": 3600.0},
        "devices": devices,
        "simulator": {"load_kw": 0.5 * n, "irradiance_pu": 0.9, "control_port": control_port},
    }


def is_received(topic: str, payload: bytes, ref: str) -> bool:
    if not topic.endswith("response/ieso"):
        return False
    body = json.loads(payload)
    return body["ref"] == ref and body["status"] == "received"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def wait_ready(peer: MqttPeer, n: int, timeout: float) -> None:
    def all_online(topic: str, payload: bytes) -> bool:
        if not topic.endswith("gateway/telemetry"):
            return False
        t = json.loads(payload)
        return sum(d["online"] for d in t["devices"]) == n and t["site"]["p_kw"] is not None

    await peer.wait_for(all_online, timeout=timeout)


async def run_one(n: int, rounds: int, workdir: Path) -> dict:
    control_port = free_port()
    site_file = workdir / f"site-{n}.toml"
    site_file.write_text(tomli_w.dumps(site_dict(n, control_port)))
    broker = Mosquitto(workdir)
    broker.start()
    sim = subprocess.Popen([sys.executable, "-m", "gateway.cli", "simulate", "--site", str(site_file),
                            "--quiet"], stdout=subprocess.DEVNULL)
    gw = None
    try:
        async with MqttPeer(broker.url) as peer:
            await peer.subscribe("tdc/v1/bench/gateway/#")
            await asyncio.sleep(1.0 + n / 200)  # the simulators open their ports
            gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--site", str(site_file),
                                   "--broker", broker.url, "--log-level", "warning"])
            await wait_ready(peer, n, timeout=60 + n / 5)
            receipt, fanout = [], []
            async with ControlClient(control_port) as ctl:
                for r in range(rounds):
                    target = (0.25 if r % 2 else 0.45) * 9.0 * n  # well below the available PV: curtailed
                    msg = {"v": 1, "type": "dispatch", "id": f"b-{n}-{r}", "issuer": "ieso",
                           "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "resource_id": "BENCH-1", "product": "energy", "kind": "algorithmic",
                           "target_kw": target,
                           "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1)),
                           "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))}
                    mark = len(peer.messages)
                    t0 = time.time()
                    await peer.publish("tdc/v1/bench/ieso/dispatch", json.dumps(msg).encode())
                    await peer.wait_for(lambda t, p, ref=msg["id"]: is_received(t, p, ref), timeout=10,
                                        start=mark)
                    receipt.append((time.time() - t0) * 1000)
                    await asyncio.sleep(1.5)  # every write has landed by then; the simulators timed each
                    state = await ctl.state()
                    # each device's first write after the dispatch; the slowest of them is the fan-out
                    firsts = [min((w for w in d["writes_at"] if w >= t0), default=None)
                              for d in state["devices"].values() if d["kind"] == "pv"]
                    if all(f is not None for f in firsts):
                        fanout.append((max(firsts) - t0) * 1000)
            return {
                "devices": n, "rounds": rounds,
                "receipt_ms": {"p50": statistics.median(receipt), "p99": pct(receipt, 0.99)},
                "last_write_ms": {"p50": statistics.median(fanout) if fanout else None,
                                  "p99": pct(fanout, 0.99) if fanout else None,
                                  "rounds_with_every_device_written": len(fanout)},
            }
    finally:
        for proc in (gw, sim):
            if proc is not None:
                proc.terminate()
                proc.wait(20)
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.devices:
            print(f"benchmark: {n} devices, {args.rounds} dispatches …", flush=True)
            res = asyncio.run(run_one(n, args.rounds, Path(tmp)))
            results.append(res)
            w = res["last_write_ms"]
            rx = res["receipt_ms"]
            print(f"  receipt p50 {rx['p50']:.1f} ms  p99 {rx['p99']:.1f} ms | "
                  f"last device write p50 {w['p50']:.1f} ms  p99 {w['p99']:.1f} ms "
                  f"({w['rounds_with_every_device_written']}/{args.rounds} rounds wrote every device)",
                  flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'latency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
