"""Soak: ≥ 10,000 malformed and hostile payloads over MQTT against a running gateway process.

mosquitto and the simulated example site run here; the gateway is its own process (`der-gateway run`),
so its resident memory (VmRSS) is its own. This process plays both roles: it publishes each case
(tests/fuzz/hostile.py: random bytes, invalid UTF-8, deep nesting, huge numbers, NaN, wrong types,
missing/extra/duplicate fields, long ids, wrong versions, near-valid messages, on every inbound topic),
each followed by a sync message whose answer closes the case's answers, and checks that every case was
answered as PROTOCOL §7 TDC-01/TDC-02 ask. The gateway's RSS is read after a warm-up and after each
batch: flat memory means nothing accumulates per message beyond the instructions it accepted. The verdict
takes the least-squares trend over the batches, not the last sample, and calls the run flat when the trend
adds at most FLAT_RSS_MIB over it. The gateway collects reference cycles once a minute: a run shorter
than two minutes counts what waits for that collection as growth, and says so.

    .venv/bin/python benchmarks/fuzz_soak.py --cases 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fuzz.hostile: the cases themselves

from gateway.cli import GC_EVERY_S
from gateway.north.mqtt import MqttPeer
from gateway.protocol.codec import decode_inbound
from gateway.store import Store
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto
from simulators.site import SiteSimulator
from tests.fuzz.hostile import Case, answer_problem, exchange, expected_of, hostile_cases, sample

RESULTS = Path(__file__).resolve().parent / "results"


FLAT_RSS_MIB = 4.0  # "a few MiB": what a run may add to the gateway's memory after warm-up and be flat


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys over xs (0 for fewer than two points): a trend, not the noise of the
    last sample."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def flat_memory(xs: list[float], rss_mib: list[float]) -> tuple[float, bool]:
    """The memory the trend adds over the run (MiB: slope × span) and whether that is flat."""
    grown = slope(xs, rss_mib) * (xs[-1] - xs[0]) if len(xs) > 1 else 0.0
    return round(grown, 1), grown <= FLAT_RSS_MIB


async def run_batches(peer: MqttPeer, prefix: str, cases: list[Case], batch: int, tag: str,
                      problems: list[tuple[Case, str]], rates: list[float],
                      sample: Callable[[int], None] = lambda _: None) -> int:
    """Every case over MQTT; returns how many were answered as they must be (problems collects the rest,
    rates each batch's cases/s; `sample` is told the cases sent so far after each batch)."""
    answered = 0
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        t0 = time.perf_counter()
        windows = await exchange(peer, prefix, chunk, tag=f"{tag}{start}")
        rates.append(len(chunk) / (time.perf_counter() - t0))
        sample(start + len(chunk))
        for case, answers in zip(chunk, windows, strict=True):
            problem = answer_problem(expected_of(decode_inbound(case.role, case.msg_type, case.payload)),
                                     answers)
            if problem is None:
                answered += 1
            else:
                problems.append((case, problem))
        # the peer keeps every message it got; what has been sorted is not needed again
        del peer.messages[:]
    return answered


async def soak(n: int, warmup: int, batch: int, seed: int, workdir: Path) -> dict:
    site = example_site()
    prefix = f"tdc/v1/{site.site.id}/"
    t0 = time.perf_counter()
    cases = sample(hostile_cases(datetime.now(UTC), site.site.resource_id), warmup + n, seed=seed)
    generated_s = time.perf_counter() - t0
    print(f"generated {len(cases)} cases in {generated_s:.1f} s", flush=True)

    broker = Mosquitto(workdir)
    broker.start()
    sim = SiteSimulator(site)
    await sim.start()
    site_file = workdir / "site.toml"
    site_file.write_text(tomli_w.dumps(site.model_dump(mode="json", exclude_none=True)))
    log = (workdir / "gateway.log").open("w")
    gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--site", str(site_file), "--broker",
                           broker.url, "--log-level", "warning", "--log-format", "text"],
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        async with MqttPeer(broker.url, client_id="fuzz-soak") as peer:
            await peer.subscribe(prefix + "gateway/#")
            await peer.wait_for(lambda t, p: t.endswith("gateway/telemetry")
                                and all(d["online"] for d in json.loads(p)["devices"]), timeout=60)
            problems: list[tuple[Case, str]] = []
            rates: list[float] = []
            await run_batches(peer, prefix, cases[:warmup], batch, "warm", problems, [])
            rss_start = rss_kib(gw.pid)
            samples: list[tuple[int, float]] = []  # (cases sent, RSS MiB) after each batch
            t1 = time.perf_counter()
            answered = await run_batches(peer, prefix, cases[warmup:], batch, "soak", problems, rates,
                                         lambda sent: samples.append((sent, rss_kib(gw.pid) / 1024)))
            elapsed = time.perf_counter() - t1
            rss_end = rss_kib(gw.pid)
            alive = gw.poll() is None
    finally:
        gw.terminate()
        gw.wait(20)
        log.close()
        await sim.stop()
        broker.stop()
    logged = (workdir / "gateway.log").read_text()
    kinds = sorted({c.kind for c in cases})
    per_1000, mib = [n / 1000 for n, _ in samples], [m for _, m in samples]
    grown, flat = flat_memory(per_1000, mib)
    return {
        "cases": n, "warmup": warmup, "seed": seed, "seconds": round(elapsed, 1),
        "cases_per_s": round(n / elapsed), "cases_per_s_first_batch": round(rates[0]),
        "cases_per_s_last_batch": round(rates[-1]), "in_force_at_end": in_force(site.store.path),
        "answered": answered, "not_answered": len(problems),
        "gateway_alive": alive, "rss_start_mib": round(rss_start / 1024, 1),
        "rss_end_mib": round(rss_end / 1024, 1), "rss_max_mib": round(max(mib), 1),
        "rss_slope_mib_per_1000_cases": round(slope(per_1000, mib), 2),
        "rss_trend_grown_mib": grown, "memory_flat": flat,
        "rss_samples_mib": [[n, round(m, 1)] for n, m in samples],
        "tracebacks_logged": logged.count("Traceback"),
        "errors_logged": sum(" ERROR " in line for line in logged.splitlines()),
        "mutations": kinds, "problems": [f"{c!r}: {p}" for c, p in problems[:10]],
    }


def in_force(store_path: Path) -> int:
    """Instructions the gateway holds when it stops: the near-valid and valid cases it accepted."""
    store = Store(store_path, 10)
    try:
        snapshot = store.state.load_engine() or {}
    finally:
        store.close()
    records = snapshot.get("state", {}).get("store", {}).get("records", {})
    return sum(len(by_id) for by_id in records.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=500, help="cases sent before the first RSS reading")
    ap.add_argument("--batch", type=int, default=200, help="cases published before waiting for answers")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(soak(args.cases, args.warmup, args.batch, args.seed, Path(tmp)))
    print(f"{res['cases']} cases in {res['seconds']} s: {res['cases_per_s']} cases/s "
          f"({res['cases_per_s_first_batch']} in the first batch, {res['cases_per_s_last_batch']} in the "
          f"last, with {res['in_force_at_end']} accepted instructions in force at the end); "
          f"answered {res['answered']}/{res['cases']} (not answered: {res['not_answered']}); "
          f"gateway alive: {res['gateway_alive']}; RSS {res['rss_start_mib']} MiB after warm-up → "
          f"{res['rss_end_mib']} MiB at the end; tracebacks logged: {res['tracebacks_logged']}")
    print(f"memory: {res['rss_slope_mib_per_1000_cases']:+.2f} MiB per 1,000 cases after warm-up (least "
          f"squares over {len(res['rss_samples_mib'])} batches), {res['rss_trend_grown_mib']:+.1f} MiB over "
          f"the run, peak {res['rss_max_mib']} MiB: {'FLAT' if res['memory_flat'] else 'NOT FLAT'} "
          f"(flat: at most {FLAT_RSS_MIB:g} MiB)")
    if res["seconds"] < 2 * GC_EVERY_S:
        print(f"   note: the gateway collects reference cycles every {GC_EVERY_S:g} s (gateway/cli.py); in "
              f"this {res['seconds']:g} s run what waits for that collection counts as growth")
    for p in res["problems"]:
        print("  ", p[:400])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fuzz_soak.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {RESULTS / 'fuzz_soak.json'}")
    return 0 if res["not_answered"] == 0 and res["gateway_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
