"""Benchmark: what a control cycle costs the store, before and after the engine's state is written
incrementally on the writer's thread (issue 17, a store that stays small).

An engine holding N live LDC envelopes (200 by default, each with its seen id) runs control cycles on the
example site's devices, one simulated second apart, the meter moving a little each cycle as a real one
does. Each cycle's journal entry (its outbound messages and the engine's state) is written two ways, into
two stores in the same directory:

- before: as on 93c7720, the whole snapshot is serialised, compared with the last one and, when it
  changed (every cycle: the meter moved), rewritten as one row and committed (fsync) on the event loop;
- after: `Journal.cycle` as the gateway runs it: the snapshot taken on the loop, handed to the store's
  writer thread, which writes only the parts that changed (`StateStore.save_engine`).

Per cycle it prints the bytes written to the store's files (the process's write() bytes, /proc/self/io
`wchar`: SQLite's WAL frames and checkpoints, all threads), the time the event loop spent on the journal
(median and max; for "after", the writer's time to durable is given apart, as the loop is free then), and
the state's own JSON bytes.

    .venv/bin/python benchmarks/store_cycle.py [--instructions 200] [--cycles 120] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import StoreSection, site_params
from gateway.core.engine import Engine
from gateway.core.model import DeviceReading, MeterReading
from gateway.journal import Journal
from gateway.protocol.codec import decode_inbound, encode_outbound
from gateway.store import Store
from gateway.store.state import StateStore, split
from gateway.store.writer import InlineWriter, writer_for
from simulators.example_site import example_site

SITE = example_site()
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def engine_with(n: int) -> Engine:
    """n live envelopes: one in force now, the others one after the other, 5 minutes each, ahead."""
    engine = Engine(site_params(SITE), T0)
    for i in range(n):
        start = T0 + timedelta(minutes=5 * i)
        body = {"v": 1, "type": "envelope", "id": f"e-{i:04d}", "issuer": "ldc", "issued_at": iso(T0),
                "start": iso(start), "end": iso(start + timedelta(minutes=5)),
                "export_limit_kw": 100.0 + i % 50, "reason": "thermal"}
        engine.receive(decode_inbound("ldc", "envelope", json.dumps(body).encode()), T0)
    return engine


def readings(i: int) -> tuple[MeterReading, list[DeviceReading]]:
    """The example site's devices near the limit; the meter moving by a few tenths of a kW a second."""
    meter = MeterReading(p_kw=99.0 + 0.3 * (i % 7), q_kvar=0.0, v_pu=1.0, hz=60.0, online=True, stale=False)
    devices = [DeviceReading(id=d.id, kind=d.kind, online=True, stale=False, p_kw=40.0, q_kvar=0.0,
                             rated_kw=d.sim.rated_kw, available_kw=d.sim.rated_kw,
                             max_charge_kw=d.sim.rated_kw if d.kind == "battery" else 0.0,
                             soc_pct=60.0 if d.kind == "battery" else None, connected=True)
               for d in SITE.devices if d.kind != "meter"]
    return meter, devices


def written_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


class WholeState(StateStore):
    """93c7720's state save: the whole snapshot serialised, compared with the last, rewritten as one row."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self.last: str | None = None

    def save_engine(self, snapshot: dict[str, Any]) -> int:
        text = json.dumps(snapshot, sort_keys=True)
        if text == self.last:
            return 0
        self.save("engine", snapshot)
        self.last = text
        return len(text)


async def run(journal: Journal, engine: Engine, n: int) -> dict[str, float]:
    """n control cycles, each journalled as the gateway does (awaited before the next)."""
    journal.restore(engine)
    loop_s, wrote, durable_s = [], [], []
    for i in range(n):
        meter, devices = readings(i)
        cycle = engine.cycle(T0 + timedelta(seconds=i + 1), meter, devices)
        outs = [encode_outbound(o, SITE.site.id) for o in cycle.outbound]
        w, t = written_bytes(), time.perf_counter()
        written = journal.cycle(cycle, outs, engine, [])
        loop_s.append(time.perf_counter() - t)  # the loop is free from here while a writer thread works
        assert await written
        durable_s.append(time.perf_counter() - t)
        wrote.append(written_bytes() - w)
    await asyncio.to_thread(journal.close)
    journal.store.close()
    # the first cycle, a full save either way, apart from the steady ones
    return {"bytes_first": wrote[0], "bytes_per_cycle": statistics.mean(wrote[1:]),
            "loop_ms_median": 1000 * statistics.median(loop_s[1:]), "loop_ms_max": 1000 * max(loop_s[1:]),
            "durable_ms_median": 1000 * statistics.median(durable_s[1:])}


def before(directory: Path) -> Journal:
    """Every write in the caller's transaction, on the event loop; the state whole."""
    store = Store(directory / "before.sqlite", 100)
    store.state = WholeState(store.conn)
    return Journal(store, InlineWriter(store))


def after(directory: Path) -> Journal:
    """As the gateway runs: the writer's thread, the state in parts."""
    section = StoreSection(path=directory / "after.sqlite")
    return Journal(Store(section.path, section.outbox_max_messages), writer_for(section))


def state_bytes(engine: Engine) -> tuple[int, int]:
    """The whole snapshot's JSON, and its largest part's (what one changed record costs at most)."""
    snap = engine.snapshot()
    return len(json.dumps(snap, sort_keys=True)), max(len(json.dumps(v)) for v in split(snap).values()
                                                       if not isinstance(v, dict) or v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instructions", type=int, default=200)
    ap.add_argument("--cycles", type=int, default=120)
    ap.add_argument("--dir", type=Path, default=None, help="where the stores go (default: a temporary "
                    "directory; put it on the disk the gateway uses for figures that mean something)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        engines = {name: engine_with(args.instructions) for name in ("before", "after")}
        results = {name: asyncio.run(run(make(Path(tmp)), engines[name], args.cycles))
                   for name, make in (("before", before), ("after", after))}
    whole, largest = state_bytes(engines["after"])
    print(f"store per control cycle, {args.instructions} live instructions, {args.cycles} cycles "
          f"(engine state: {whole / 1024:.0f} KiB of JSON whole, its largest part {largest} B)")
    print(f"{'':8} {'bytes written/cycle':>20} {'first cycle':>12} {'loop ms median':>15} {'loop ms max':>12}"
          f" {'durable ms median':>18}")
    for name, f in results.items():
        durable = f"{f['durable_ms_median']:18.2f}"
        print(f"{name:8} {f['bytes_per_cycle']:20,.0f} {f['bytes_first']:12,.0f} {f['loop_ms_median']:15.2f} "
              f"{f['loop_ms_max']:12.2f} {durable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
