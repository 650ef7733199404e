"""What a control cycle and a receipt cost in the decision core as live instructions pile up (core only).

An `Engine` with n future-dated dispatches (back-to-back 5-minute windows from 5 minutes ahead, as IESO
sends them) and n / 4 envelopes (15-minute windows over the same span, export limits that bind every
other one), a three-device site and a meter. For each n: the median wall time of `cycle` over a few
cycles, and of `receive` of one more dispatch and one more envelope (each on a fresh copy of the engine,
so that every sample sees n live instructions). No I/O: this is the event loop's share of the decision.

    .venv/bin/python benchmarks/instruction_cost.py                      # n = 48 96 144 500 1000
    .venv/bin/python benchmarks/instruction_cost.py --sizes 96 --profile # cProfile of one size

The script runs against whatever `gateway` is importable, so the same file measures an older checkout:
`PYTHONPATH=/path/to/old/checkout python benchmarks/instruction_cost.py`. A size whose first cycle takes
longer than --budget-s ends the run (the cost before the rework grows with the cube of n).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.core import model as m
from gateway.core.engine import Engine

T0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
FIELDS = set(m.SiteParams.__dataclass_fields__)
PARAMS = m.SiteParams(site_id="site-1", resource_id="DER-1", export_cap_kw=300.0, import_cap_kw=400.0,
                      default_envelope=m.Limits(export_limit_kw=50.0))
DEVICES = [m.DeviceReading("pv1", "pv", True, False, 200.0, 0.0, 250.0, 225.0, 0.0, None, True),
           m.DeviceReading("pv2", "pv", True, False, 120.0, 0.0, 150.0, 135.0, 0.0, None, True),
           m.DeviceReading("bess1", "battery", True, False, 0.0, 0.0, 200.0, 200.0, 200.0, 50.0, True)]
METER = m.MeterReading(200.0, 0.0, 1.0, 60.0, True, False)


def params() -> m.SiteParams:
    """The test site, with caps (live instructions, horizon) that let every size through on code that has
    them: 1,000 back-to-back 5-minute dispatches reach 3.5 days ahead."""
    if "max_live_instructions" not in FIELDS:
        return PARAMS
    return replace(PARAMS, max_live_instructions=m.RoleLimits(ieso=100_000, ldc=100_000),
                   max_horizon_s=m.RoleLimits(ieso=365 * 86400.0, ldc=365 * 86400.0))


def dispatch(i: int, issued: datetime) -> m.Dispatch:
    start = T0 + timedelta(minutes=5 * (i + 1))
    return m.Dispatch(id=f"d-{i}", issuer="ieso", issued_at=issued, resource_id="DER-1", product="energy",
                      kind="algorithmic", target_kw=150.0 + (i % 7) * 10, start=start,
                      end=start + timedelta(minutes=5), digest=f"d-{i}")


def envelope(i: int, issued: datetime) -> m.Envelope:
    start = T0 + timedelta(minutes=5 + 15 * i)
    export = 120.0 if i % 2 else 280.0
    return m.Envelope(id=f"e-{i}", issuer="ldc", issued_at=issued, start=start,
                      end=start + timedelta(minutes=15), limits=m.Limits(export_limit_kw=export),
                      reason="thermal", digest=f"e-{i}")


def engine_with(n: int) -> Engine:
    engine = Engine(params(), T0)
    for i in range(n):
        engine.receive(dispatch(i, T0), T0)
    for i in range(n // 4):
        engine.receive(envelope(i, T0), T0)
    engine.cycle(T0, METER, DEVICES)
    return engine


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def measure(n: int, cycles: int) -> dict:
    engine = engine_with(n)
    snap = engine.snapshot()
    now = [T0]

    def one_cycle() -> None:
        now[0] += timedelta(seconds=1)
        engine.receive(m.Heartbeat(id="hb", issuer="ldc", issued_at=now[0]), now[0])
        engine.receive(m.Heartbeat(id="hb", issuer="ieso", issued_at=now[0]), now[0])
        engine.cycle(now[0], METER, DEVICES)

    cycle_s = timed(one_cycle, cycles)

    def fresh() -> Engine:
        e = Engine(params(), T0)
        e.restore(snap)
        return e

    def receive(msg: m.Message) -> float:
        samples = []
        for _ in range(cycles):
            e = fresh()
            t = time.perf_counter()
            e.receive(msg, T0)
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    live = sum(len(by_id) for by_id in engine.state.store.records.values())
    return {"n_dispatches": n, "n_envelopes": n // 4, "live": live, "cycle_ms": round(cycle_s * 1e3, 2),
            "receive_dispatch_ms": round(receive(dispatch(n, T0)) * 1e3, 2),
            "receive_envelope_ms": round(receive(envelope(n // 4, T0)) * 1e3, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 96, 144, 500, 1000])
    ap.add_argument("--cycles", type=int, default=5, help="samples per figure (the median is printed)")
    ap.add_argument("--budget-s", type=float, default=20.0, help="stop before sizes after one this slow")
    ap.add_argument("--profile", action="store_true", help="cProfile the cycles of the first size")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.profile:
        engine = engine_with(args.sizes[0])
        prof = cProfile.Profile()
        prof.enable()
        for k in range(1, args.cycles + 1):
            engine.cycle(T0 + timedelta(seconds=k), METER, DEVICES)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        return 0
    rows = []
    print(f"{'dispatches':>10} {'envelopes':>9} {'live':>5} {'cycle ms':>10} {'receive dispatch ms':>20} "
          f"{'receive envelope ms':>20}", flush=True)
    for n in args.sizes:
        t = time.perf_counter()
        row = measure(n, args.cycles)
        rows.append(row)
        print(f"{row['n_dispatches']:>10} {row['n_envelopes']:>9} {row['live']:>5} {row['cycle_ms']:>10} "
              f"{row['receive_dispatch_ms']:>20} {row['receive_envelope_ms']:>20}", flush=True)
        if row["cycle_ms"] / 1e3 > args.budget_s or time.perf_counter() - t > 10 * args.budget_s:
            print(f"stopping: n = {n} is over the budget of {args.budget_s:g} s", flush=True)
            break
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
