"""Benchmark: from an LDC limit becoming visible to the first device write that carries it, over IEEE 2030.5
(a DERControl appearing on the utility server, polled at pollRate 1 s) and over MQTT (an envelope
published), side by side in the same run; then the process's CPU and RSS with the 2030.5 client polling
at 1 s against the same site without it.

Everything runs in this process on loopback sockets, as the tests do: mosquitto, the example site's
simulated devices, the utility-server simulator over mutual TLS, the gateway. A limit is "carried" when
the core holds the instruction; the latency ends at the next write to pv1 after that (pv1's simulator
stamps every register write).

    .venv/bin/python benchmarks/sep2_latency.py --rounds 10 --idle-s 20
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support.rig: the tests' whole site

from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto
from simulators.sep2_certs import make_pki
from simulators.sep2_server import Sep2Server
from tests.support.rig import Rig


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def until(pred: Callable[[], bool], timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("not carried in time")
        await asyncio.sleep(0.005)
    return time.time()


async def carried(rig: Rig, marker: str, t0: float) -> float:
    """Seconds from t0 to pv1's first write after the core holds an instruction whose id has `marker`."""
    assert rig.gateway is not None
    gw = rig.gateway
    await until(lambda: any(marker in i for i in gw.live("ldc")))
    pv1 = rig.sim.devices["pv1"]
    held_at = time.time()
    wrote = await until(lambda: bool(pv1.writes_at) and pv1.writes_at[-1] > held_at)
    return wrote - t0


async def run(rounds: int, idle_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        pki = make_pki(Path(tmp) / "pki")
        server = Sep2Server(pki)
        for r in ("dcap", "edevl", "fsal", "derpl", "derl"):
            server.set_poll_rate(r, 1)
        server.multiplier = 2  # limits in hundreds of W, as envoy's site_control_pow10_encoding can be
        await server.start()
        sections = {"sep2": {"enabled": True, "server": server.dcap_url, "ca": str(pki.ca_cert),
                             "cert": str(pki.client_cert), "key": str(pki.client_key)},
                    "ldc": {"default_envelope": "sep2"}}
        try:
            rig = Rig(example_site(sections=sections), broker.url)
            await rig.start()
            sep2, mqtt = [], []
            for n in range(rounds):
                limit_kw = 100.0 - n  # every round a new, tighter limit
                t0 = time.time()
                # a touch looser than MQTT's, so that each is a change the core applies; created a second
                # after the one before (equal creationTimes are decided by mRID, not by order)
                mrid = server.add_control(1, server.now() - 1, 600, export_w=limit_kw * 1000 + 500,
                                          creation_time=server.now() + n)
                sep2.append(await carried(rig, mrid, t0))
                t0 = time.time()
                await rig.send("ldc", "envelope", f"bench-{n}", start=0, end=600, export_limit_kw=limit_kw,
                               reason="thermal")
                mqtt.append(await carried(rig, f"bench-{n}", t0))
                print(f"round {n + 1}/{rounds}: 2030.5 {sep2[-1] * 1000:7.0f} ms   "
                      f"MQTT {mqtt[-1] * 1000:5.0f} ms", flush=True)
            for name, xs in (("2030.5 (pollRate 1 s)", sep2), ("MQTT", mqtt)):
                print(f"{name:<22} visible → first device write: "
                      f"median {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms "
                      f"(n={len(xs)})")
            with_client = await idle(rig, idle_s)
            await rig.stop()
            rig = Rig(example_site(), broker.url)
            await rig.start()
            without = await idle(rig, idle_s)
            await rig.stop()
            print(f"process CPU over {idle_s:.0f} s at rest: with the 2030.5 client {with_client[0]:.1f} %, "
                  f"without {without[0]:.1f} % (the client: {with_client[0] - without[0]:+.1f} % of a core); "
                  f"RSS {with_client[1]:.1f} MiB against {without[1]:.1f} MiB; "
                  f"2030.5 requests served {len(server.requests)}")
        finally:
            await server.stop()
            broker.stop()


async def idle(rig: Rig, seconds: float) -> tuple[float, float]:
    """The process's CPU (% of one core) over `seconds` of a site at rest, and its RSS at the end."""
    await asyncio.sleep(2)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.sleep(seconds)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (t1 - t0) * 100
    return cpu, rss_mib()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--idle-s", type=float, default=20.0)
    args = ap.parse_args()
    asyncio.run(run(args.rounds, args.idle_s))


if __name__ == "__main__":
    main()
