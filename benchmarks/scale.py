"""Benchmark: the gateway at N SunSpec devices (N = 10, 100, 1,000 by default), each part in its own process.

mosquitto, the simulated devices (`der-gateway simulate`, light physics: the same registers as the
OpenDER inverters, a first-order response instead of OpenDER) and the gateway (`der-gateway run`) run as
separate processes; this process speaks for the market side. For each N it measures:

- instruction at the broker → `received` response (p50, p99), timed by this process;
- instruction → every device written (p50, p99): each simulator records when its registers are written;
- device poll throughput: the gateway's SunSpec driver reading every device (its real read: the same
  coalesced requests, decoding and scaling) against bare pymodbus clients making the same requests, in
  the same run, against the same simulators: requests per second and their ratio;
- the gateway process's CPU (share of one core) and peak RSS, and whether any control cycle overran
  `control_interval_s` (the gateway logs each overrun).

    .venv/bin/python benchmarks/scale.py --devices 10 100 1000

Results go to benchmarks/results/scale.json and scale.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
from pymodbus.client import AsyncModbusTcpClient

from gateway.config import load_site
from gateway.north.mqtt import MqttPeer
from gateway.south.factory import build_devices
from gateway.south.sunspec_device import SunSpecDevice
from simulators.control import ControlClient
from simulators.mosquitto import Mosquitto, free_port

RESULTS = Path(__file__).resolve().parent / "results"
RATED_KW = 10.0
IRRADIANCE = 0.9


def site_dict(n: int, control_port: int, workdir: Path) -> dict:
    devices = [
        {
            "id": f"pv{i:04d}",
            "kind": "pv",
            "port": free_port(),
            "reversion_timeout_s": 600.0,
            "timeout_s": 2.0,
            "sim": {"rated_kw": RATED_KW, "variant": "ieee1547", "physics": "light"},
        }
        for i in range(n)
    ]
    devices.append({"id": "meter", "kind": "meter", "port": free_port()})
    return {
        "site": {
            "id": "bench",
            "resource_id": "BENCH-1",
            "export_cap_kw": RATED_KW * n,
            "import_cap_kw": RATED_KW * n,
            "telemetry_interval_s": 5.0,
            "comms_timeout_s": 3600.0,
        },
        "store": {"path": str(workdir / f"gateway-{n}.sqlite")},
        "devices": devices,
        "simulator": {
            "load_kw": 0.05 * RATED_KW * n,
            "irradiance_pu": IRRADIANCE,
            "control_port": control_port,
        },
    }


async def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def now_rfc3339(offset_s: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset_s))


class ProcStats:
    """CPU seconds and peak RSS of a process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0, self.cpu0 = time.monotonic(), self.cpu_s()

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_share(self) -> float:
        return (self.cpu_s() - self.cpu0) / (time.monotonic() - self.t0)


async def wait_all_online(peer: MqttPeer, n: int, timeout: float) -> None:
    def all_online(topic: str, payload: bytes) -> bool:
        if not topic.endswith("gateway/telemetry"):
            return False
        t = json.loads(payload)
        return sum(d["online"] for d in t["devices"]) == n and t["site"]["p_kw"] is not None

    await peer.wait_for(all_online, timeout=timeout)


def is_received(topic: str, payload: bytes, ref: str) -> bool:
    if not topic.endswith("response/ieso"):
        return False
    body = json.loads(payload)
    return body["ref"] == ref and body["status"] == "received"


async def latencies(
    peer: MqttPeer, ctl: ControlClient, n: int, rounds: int
) -> tuple[list[float], list[float]]:
    receipt, fanout = [], []
    for r in range(rounds):
        # well below the available PV, so every inverter is curtailed and each dispatch moves every limit
        target = (0.25 if r % 2 else 0.45) * IRRADIANCE * RATED_KW * n
        msg = {
            "v": 1,
            "type": "dispatch",
            "id": f"b-{n}-{r}",
            "issuer": "ieso",
            "issued_at": now_rfc3339(),
            "resource_id": "BENCH-1",
            "product": "energy",
            "kind": "algorithmic",
            "target_kw": target,
            "start": now_rfc3339(-1),
            "end": now_rfc3339(3600),
        }
        mark = len(peer.messages)
        t0 = time.time()
        await peer.publish("tdc/v1/bench/ieso/dispatch", json.dumps(msg).encode())
        await peer.wait_for(lambda t, p, ref=msg["id"]: is_received(t, p, ref), timeout=10, start=mark)
        receipt.append((time.time() - t0) * 1000)
        await asyncio.sleep(1.5 + n / 1000)  # every write has landed by then; the simulators timed each
        state = await ctl.state()
        # each device's first write after the dispatch; the slowest of them is the fan-out
        firsts = [
            min((w for w in d["writes_at"] if w >= t0), default=None)
            for d in state["devices"].values()
            if d["kind"] == "pv"
        ]
        if all(f is not None for f in firsts):
            fanout.append((max(firsts) - t0) * 1000)
    return receipt, fanout


async def poll_throughput(site_file: Path, rounds: int) -> dict:
    """Requests/s of the gateway's driver reading every device, and of bare pymodbus on the same requests."""
    site = load_site(site_file)
    devices = [d for d in build_devices(site) if isinstance(d, SunSpecDevice)]
    await asyncio.gather(*(d.read() for d in devices))  # discovery and connections, not timed
    requests = sum(len(d.read_spans) for d in devices)
    t = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(d.read() for d in devices))
    driver = requests * rounds / (time.perf_counter() - t)
    for d in devices:
        await d.close()

    clients = []
    for cfg, dev in zip(site.devices, devices, strict=True):
        client = AsyncModbusTcpClient(cfg.host, port=cfg.port, timeout=2)
        await client.connect()
        clients.append((client, cfg.unit_id, dev.read_spans))

    async def bare_read(client: AsyncModbusTcpClient, unit: int, spans: list[tuple[int, int]]) -> None:
        for address, count in spans:
            await client.read_holding_registers(address, count=count, device_id=unit)

    await asyncio.gather(*(bare_read(*c) for c in clients))
    t = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(bare_read(*c) for c in clients))
    bare = requests * rounds / (time.perf_counter() - t)
    for client, _, _ in clients:
        client.close()
    return {
        "requests_per_round": requests,
        "driver_req_s": round(driver),
        "bare_pymodbus_req_s": round(bare),
        "ratio": round(driver / bare, 3),
    }


async def run_one(n: int, rounds: int, workdir: Path) -> dict:
    control_port = free_port()
    site_file = workdir / f"site-{n}.toml"
    site_file.write_text(tomli_w.dumps(site_dict(n, control_port, workdir)))
    broker = Mosquitto(workdir)
    broker.start()
    with (workdir / f"simulators-{n}.log").open("w") as sim_log:
        sim = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "simulate", "--site", str(site_file), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=sim_log,
        )
    gw_log = workdir / f"gateway-{n}.log"
    gw = None
    try:
        await wait_port(control_port, timeout=60 + n / 10)  # the simulators listen
        async with ControlClient(control_port) as ctl, MqttPeer(broker.url) as peer:
            await peer.subscribe("tdc/v1/bench/gateway/#")
            with gw_log.open("w") as log:
                gw = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gateway.cli",
                        "run",
                        "--site",
                        str(site_file),
                        "--broker",
                        broker.url,
                        "--log-level",
                        "warning",
                    ],
                    stderr=log,
                )
            await wait_all_online(peer, n, timeout=60 + n / 5)
            stats = ProcStats(gw.pid)
            receipt, fanout = await latencies(peer, ctl, n, rounds)
            cpu, rss = stats.cpu_share(), stats.peak_rss_mb()
            polls = await poll_throughput(site_file, rounds=5)
        overruns = gw_log.read_text().count("longer than control_interval_s")
        return {
            "devices": n,
            "rounds": rounds,
            "receipt_ms": {"p50": round(statistics.median(receipt), 2), "p99": round(pct(receipt, 0.99), 2)},
            "all_written_ms": {
                "p50": round(statistics.median(fanout), 1) if fanout else None,
                "p99": round(pct(fanout, 0.99), 1) if fanout else None,
                "rounds_with_every_device_written": len(fanout),
            },
            "poll": polls,
            "gateway": {
                "cpu_share_of_one_core": round(cpu, 3),
                "peak_rss_mb": round(rss, 1),
                "cycle_overruns": overruns,
            },
        }
    finally:
        for proc in (gw, sim):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        broker.stop()


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["devices"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(n, [r["receipt_ms"]["p99"] for r in results], "o-", label="received p99")
    a.plot(
        n,
        [r["all_written_ms"]["p99"] or float("nan") for r in results],
        "s-",
        label="every device written p99",
    )
    a.axhline(50, ls=":", c="C0")
    a.axhline(1000, ls=":", c="C1")
    a.set(xscale="log", yscale="log", xlabel="devices", ylabel="ms", title="latency from the broker")
    a.legend()
    b.plot(n, [r["poll"]["ratio"] * 100 for r in results], "o-", label="driver / bare pymodbus, %")
    b.plot(n, [r["gateway"]["peak_rss_mb"] for r in results], "s-", label="gateway peak RSS, MB")
    b.axhline(80, ls=":", c="C0")
    b.axhline(150, ls=":", c="C1")
    b.set(xscale="log", xlabel="devices", title="throughput and memory")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--workdir", type=Path, help="keep the site files, store and gateway logs here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for n in args.devices:
            print(f"benchmark: {n} devices, {args.rounds} dispatches …", flush=True)
            r = asyncio.run(run_one(n, args.rounds, workdir))
            results.append(r)
            rx, w, p, g = r["receipt_ms"], r["all_written_ms"], r["poll"], r["gateway"]
            print(
                f"  received p50 {rx['p50']} ms p99 {rx['p99']} ms | every device written p50 {w['p50']} ms "
                f"p99 {w['p99']} ms ({w['rounds_with_every_device_written']}/{args.rounds} rounds)\n"
                f"  polling: driver {p['driver_req_s']} req/s vs bare pymodbus "
                f"{p['bare_pymodbus_req_s']} req/s "
                f"= {p['ratio']:.0%} | gateway CPU {g['cpu_share_of_one_core']:.0%} of a core, "
                f"peak RSS {g['peak_rss_mb']} MB, cycle overruns {g['cycle_overruns']}",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "scale.png")
    print(f"wrote {RESULTS / 'scale.json'} and {RESULTS / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
