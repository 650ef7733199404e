"""Soak: a compressed day of instructions, with 2 % hostile payloads, against a running gateway process.

mosquitto, the simulated example site (`der-gateway simulate`) and the gateway (`der-gateway run`) each
run as their own process; this one speaks for the market side and the LDC. The day, as a real site sees
it: a dispatch every 5 minutes (IESO's interval, for the next interval: window [t + 5 min, t + 10 min),
targets following a daily shape), an LDC envelope every 15 minutes (window [t, t + 30 min), replacing
the previous one, its export limit binding the dispatch at midday and in the evening peak), a heartbeat
from each role every 30 s, and among all of it 2 % hostile payloads (tests/fuzz/hostile.py: random
bytes, deep nesting, NaN, wrong types, long ids, near-valid messages… on every inbound topic).

How time is compressed: the day's schedule runs `--compression` times faster (96 by default: the day
in 15 minutes), and so do the instructions' windows (a 5-minute dispatch window lasts 300/96 = 3.1 s of
the gateway's wall clock), while the gateway runs as it would on site: its control cycle every second,
telemetry every 5 s, its own clock. So the gateway gets a whole day's instructions, answers, starts,
supersessions and completions (and keeps their ids: a day's worth of seen ids, as a real site does in its
first day), in fewer control cycles per part of the day than a real day has.

Every answer is checked: each hostile case as the fuzz tests check it (an `error`, or `received` then a
decision; rejected input changes nothing); each dispatch `received`, then the decision the day's own
envelopes predict (`accepted`, or `constrained` DISTRIBUTION_CONSTRAINT at the envelope's limit; a
different one counts only when its `constraint` names a hostile instruction that the gateway accepted),
then `started` and `completed` (or `superseded`); each envelope `received`, `accepted`, `started`, then
`superseded` by the next (the last one `completed`); no answer to a heartbeat. Per part of the day it
prints the gateway's resident memory (VmRSS), its CPU, its control cycles (the /metrics histogram:
count, mean, the p99 bucket, overruns of the 1 s interval; every message received triggers a cycle of its
own, TDC-11, so the compressed day has more of those per part than a real one), the instructions in force
(status `active`)
and the telemetry samples above the export limit in force: flat memory and cycle time show that nothing
accumulates over the day. The verdict takes the least-squares trend over the parts (RSS at each part's
end, the mean cycle of each part) per compressed hour: memory is flat when the trend adds at most
FLAT_RSS_MIB over the day, cycle time when it moves by at most FLAT_CYCLE_SHARE of the first part's mean.

    .venv/bin/python benchmarks/day_soak.py                      # the day in 15 minutes
    .venv/bin/python benchmarks/day_soak.py --hours 3 --parts 3  # a shorter run, the same rates

Results go to benchmarks/results/day_soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fuzz.hostile, benchmarks.fuzz_soak

from benchmarks.fuzz_soak import FLAT_RSS_MIB, flat_memory, rss_kib, slope
from gateway.north.mqtt import MqttPeer
from gateway.protocol.codec import decode_inbound
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto, free_port
from tests.fuzz.hostile import Case, answer_problem, exchange, expected_of, hostile_cases, iso, sample

RESULTS = Path(__file__).resolve().parent / "results"
DAY_S = 86400
DISPATCH_EVERY_S, ENVELOPE_EVERY_S, HEARTBEAT_EVERY_S = 300, 900, 30
HOSTILE_SHARE = 0.02
TERMINAL = {"completed", "superseded"}
FRESH = {"accepted", "constrained"}  # a later change of what can be delivered (§4)
CYCLE_METRIC = "der_gateway_control_cycle_seconds"
FLAT_CYCLE_SHARE = 0.2  # cycle time is flat when its trend moves it by at most this share over the day
COLUMNS = [("hours", 11), ("sent", 6), ("hostile", 7), ("in force", 8), ("RSS MiB", 8), ("CPU %", 6),
           ("cycles", 6), ("mean ms", 8), ("p99 ≤ ms", 9), ("overruns", 8), ("over limit", 10)]


def target_kw(day_s: float) -> float:
    """A market schedule's daily shape: low at night, two humps (morning and evening), 40–190 kW."""
    h = day_s / 3600
    return round(40 + 90 * math.exp(-((h - 9) / 2.5) ** 2) + 150 * math.exp(-((h - 18.5) / 2.0) ** 2), 1)


def export_limit_kw(day_s: float) -> float:
    """The LDC's envelope: tight when the feeder is loaded with solar (11:00–14:00) and at the evening
    peak (17:00–20:00), loose otherwise."""
    h = day_s / 3600
    return 100.0 if 11 <= h < 14 else 150.0 if 17 <= h < 20 else 280.0


@dataclass
class Sent:
    """A legitimate instruction of the day and what its decision must be."""

    role: str
    msg_type: str
    msg_id: str
    ends_at: datetime  # real time
    expect: tuple[str, float | None]  # the decision: (status, accepted_kw), accepted_kw None for an envelope


@dataclass
class Part:
    """What is measured over one part of the day."""

    hours: str
    legit: int = 0
    hostile: int = 0
    hostile_problems: list[str] = field(default_factory=list)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (USER_HZ = 100)


async def cycle_histogram(web_port: int) -> dict[str, float]:
    """The gateway's control-cycle histogram from /metrics: cumulative counts by bound, sum and count."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{web_port}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{CYCLE_METRIC}_bucket":
                out[s.labels["le"]] = s.value
            elif s.name in (f"{CYCLE_METRIC}_sum", f"{CYCLE_METRIC}_count"):
                out[s.name.rsplit("_", 1)[1]] = s.value
    return out


def cycle_stats(before: dict[str, float], after: dict[str, float], interval_s: float) -> dict[str, Any]:
    count = after["count"] - before.get("count", 0.0)
    bounds = sorted((float(le), n - before.get(le, 0.0)) for le, n in after.items()
                    if le not in ("sum", "count"))
    within = max((v for le, v in bounds if le <= interval_s), default=0.0)
    p99 = next((le for le, v in bounds if count and v >= 0.99 * count), math.inf)
    mean = (after["sum"] - before.get("sum", 0.0)) / count if count else math.nan
    return {"cycles": int(count), "mean_ms": round(mean * 1e3, 1), "p99_at_most_ms": p99 * 1e3,
            "overruns": int(count - within)}


def schedule(hours: float) -> list[tuple[int, str, int]]:
    """(day second, kind, index) of every legitimate message, in sending order at equal times: the
    envelope first, so that the dispatch sent with it is assessed against it."""
    end = int(hours * 3600)
    rank = {"envelope": 0, "dispatch": 1, "heartbeat-ldc": 2, "heartbeat-ieso": 3}
    events = [(t, "envelope", t // ENVELOPE_EVERY_S) for t in range(0, end, ENVELOPE_EVERY_S)]
    events += [(t, "dispatch", t // DISPATCH_EVERY_S) for t in range(0, end, DISPATCH_EVERY_S)]
    events += [(t, f"heartbeat-{role}", t // HEARTBEAT_EVERY_S) for t in range(0, end, HEARTBEAT_EVERY_S)
               for role in ("ldc", "ieso")]
    return sorted(events, key=lambda e: (e[0], rank[e[1]]))


class Day:
    def __init__(self, prefix: str, resource_id: str, compression: float, start: datetime) -> None:
        self.prefix, self.resource_id, self.compression, self.start = prefix, resource_id, compression, start
        self.sent: dict[str, Sent] = {}

    def real(self, day_s: float) -> datetime:
        return self.start + timedelta(seconds=day_s / self.compression)

    def message(self, day_s: int, kind: str, i: int) -> tuple[str, bytes]:
        """The topic and payload of one legitimate message, remembering what it must be answered."""
        now = iso(datetime.now(UTC))
        if kind.startswith("heartbeat-"):
            role = kind.removeprefix("heartbeat-")
            body: dict[str, Any] = {"type": "heartbeat", "id": f"day-hb-{role}-{i}", "issuer": role}
            return f"{self.prefix}{role}/heartbeat", self._dumps(body, now)
        if kind == "envelope":
            start, end = self.real(day_s), self.real(day_s + 2 * ENVELOPE_EVERY_S)
            body = {"type": "envelope", "id": f"day-e-{i}", "issuer": "ldc", "start": iso(start),
                    "end": iso(end), "export_limit_kw": export_limit_kw(day_s), "reason": "thermal"}
            if i:
                body["replaces"] = f"day-e-{i - 1}"
            self.sent[body["id"]] = Sent("ldc", "envelope", body["id"], end, ("accepted", None))
            return f"{self.prefix}ldc/envelope", self._dumps(body, now)
        start, end = self.real(day_s + DISPATCH_EVERY_S), self.real(day_s + 2 * DISPATCH_EVERY_S)
        target = target_kw(day_s + DISPATCH_EVERY_S)
        # the envelope sent with or before it is in force over its whole window (it ends 15 minutes after
        # the next envelope starts), and the next one is not known yet
        limit = export_limit_kw(day_s // ENVELOPE_EVERY_S * ENVELOPE_EVERY_S)
        expect = ("accepted", target) if target <= limit else ("constrained", limit)
        body = {"type": "dispatch", "id": f"day-d-{i}", "issuer": "ieso", "resource_id": self.resource_id,
                "product": "energy", "kind": "algorithmic", "target_kw": target, "start": iso(start),
                "end": iso(end)}
        self.sent[body["id"]] = Sent("ieso", "dispatch", body["id"], end, expect)
        return f"{self.prefix}ieso/dispatch", self._dumps(body, now)

    @staticmethod
    def _dumps(body: dict[str, Any], now: str) -> bytes:
        return json.dumps({"v": 1, **body, "issued_at": now}).encode()


def check_legit(day: Day, messages: list[tuple[str, bytes, bool]], accepted_hostile: set[str]) -> dict:
    """Every answer to the day's own messages, against what it must be (see the module's docstring)."""
    answers: dict[str, list[dict]] = {}
    constraints: dict[str, list[dict]] = {}
    heartbeat_answers = 0
    for topic, payload, _ in messages:
        if topic.startswith(f"{day.prefix}gateway/response/"):
            body = json.loads(payload)
            if body["ref"].startswith("day-hb-"):
                heartbeat_answers += 1
            answers.setdefault(body["ref"], []).append(body)
        elif topic == f"{day.prefix}gateway/constraint":
            body = json.loads(payload)
            constraints.setdefault(body["ref"], []).append(body)
    problems: list[str] = []
    explained = decisions_checked = 0
    for msg_id, sent in day.sent.items():
        got = answers.get(msg_id, [])
        statuses = [a["status"] for a in got]
        if len(got) < 2 or statuses[0] != "received":
            problems.append(f"{msg_id}: {statuses}")
            continue
        decision, (want, want_kw) = got[1], sent.expect
        decisions_checked += 1
        if decision["status"] != want or (want_kw is not None and decision.get("accepted_kw") != want_kw):
            bindings = sorted({c["binding"] for c in constraints.get(msg_id, [])})
            if decision["status"] == "constrained" and any(b.split(":", 1)[-1] in accepted_hostile
                                                           for b in bindings):
                explained += 1
            else:
                problems.append(f"{msg_id}: decided {decision['status']} {decision.get('accepted_kw')} "
                                f"({decision.get('reason')}, bindings {bindings}), expected {sent.expect}")
        rest = statuses[2:]
        if not rest or rest[-1] not in TERMINAL or sum(s in TERMINAL for s in rest) != 1:
            problems.append(f"{msg_id}: lifecycle {statuses}")
            continue
        middle = rest[:-1]
        if any(s not in FRESH | {"started"} for s in middle) or middle.count("started") > 1 \
                or (rest[-1] == "completed" and "started" not in middle):
            problems.append(f"{msg_id}: lifecycle {statuses}")
        if sent.msg_type == "envelope" and any(s != "started" for s in middle):
            problems.append(f"{msg_id}: lifecycle {statuses}")
    return {"instructions": len(day.sent), "decisions_checked": decisions_checked,
            "explained_by_hostile": explained, "heartbeat_answers": heartbeat_answers, "problems": problems}


def hostile_ids(cases: list[Case], messages: list[tuple[str, bytes, bool]], prefix: str) -> set[str]:
    """The ids of hostile cases the gateway accepted (they may constrain the day's dispatches)."""
    ids = {getattr(decode_inbound(c.role, c.msg_type, c.payload), "id", None) for c in cases}
    out = set()
    for topic, payload, _ in messages:
        if topic.startswith(f"{prefix}gateway/response/"):
            body = json.loads(payload)
            if body["ref"] in ids and body["status"] in ("accepted", "constrained"):
                out.add(body["ref"])
    return out


async def soak(hours: float, parts: int, compression: float, seed: int, workdir: Path) -> dict:
    site = example_site()
    prefix = f"tdc/v1/{site.site.id}/"
    web_port = free_port()
    data = site.model_dump(mode="json", exclude_none=True)
    data["site"]["telemetry_interval_s"] = 5.0
    data["simulator"]["load_variation_kw"] = 30.0  # the example site's load, as it ships
    data["web"] = {"enabled": True, "port": web_port}
    site_file = workdir / "site.toml"
    site_file.write_text(tomli_w.dumps(data))
    interval_s = site.site.control_interval_s
    rng = random.Random(seed)

    broker = Mosquitto(workdir)
    broker.start()
    sim_log, gw_log = (workdir / "simulator.log").open("w"), (workdir / "gateway.log").open("w")
    sim = subprocess.Popen([sys.executable, "-m", "gateway.cli", "simulate", "--site", str(site_file),
                            "--quiet"], stdout=sim_log, stderr=subprocess.STDOUT)
    gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--site", str(site_file), "--broker",
                           broker.url, "--log-level", "warning", "--log-format", "text"],
                          stdout=gw_log, stderr=subprocess.STDOUT)
    rows: list[dict[str, Any]] = []
    hostile_sent: list[Case] = []
    try:
        async with MqttPeer(broker.url, client_id="day-soak") as peer:
            await peer.subscribe(prefix + "gateway/#")
            await peer.wait_for(lambda t, p: t.endswith("gateway/telemetry")
                                and all(d["online"] for d in json.loads(p)["devices"]), timeout=90)
            day = Day(prefix, site.site.resource_id, compression, datetime.now(UTC) + timedelta(seconds=1))
            events = schedule(hours)
            part_s = hours * 3600 / parts
            hist, cpu, mark = await cycle_histogram(web_port), cpu_s(gw.pid), len(peer.messages)
            rss_start = rss_kib(gw.pid)
            print(f"gateway RSS {rss_start / 1024:.1f} MiB before the day; {len(events)} messages of the day "
                  f"at {compression:g}× ({hours * 3600 / compression / 60:.1f} min)", flush=True)
            print(" ".join(f"{name:>{width}}" for name, width in COLUMNS), flush=True)
            k = 0
            for p in range(parts):
                part = Part(f"{p * part_s / 3600:05.2f}–{(p + 1) * part_s / 3600:05.2f}")
                now_at = datetime.now(UTC)
                cases = sample(hostile_cases(now_at, site.site.resource_id),
                               max(1, round(HOSTILE_SHARE / (1 - HOSTILE_SHARE) * len(events) / parts * 2)),
                               seed=seed + p)
                t_part = time.perf_counter()
                while k < len(events) and events[k][0] < (p + 1) * part_s:
                    day_s, kind, i = events[k]
                    delay = (day.real(day_s) - datetime.now(UTC)).total_seconds()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    topic, payload = day.message(day_s, kind, i)
                    await peer.publish(topic, payload)
                    part.legit += 1
                    k += 1
                    if cases and rng.random() < HOSTILE_SHARE / (1 - HOSTILE_SHARE):
                        case = cases.pop()
                        (answers,) = await exchange(peer, prefix, [case], tag=f"{p}-{part.hostile}")
                        problem = answer_problem(expected_of(decode_inbound(case.role, case.msg_type,
                                                                             case.payload)), answers)
                        if problem is not None:
                            part.hostile_problems.append(f"{case!r}: {problem}")
                        hostile_sent.append(case)
                        part.hostile += 1
                elapsed = time.perf_counter() - t_part
                after, cpu_after = await cycle_histogram(web_port), cpu_s(gw.pid)
                rows.append(part_row(part, peer.messages[mark:], prefix, rss_kib(gw.pid), cpu_after - cpu,
                                     elapsed, cycle_stats(hist, after, interval_s)))
                hist, cpu, mark = after, cpu_after, len(peer.messages)
                print_row(rows[-1])
            # every window of the day ends, and its last answers come
            last_end = max(s.ends_at for s in day.sent.values())
            await asyncio.sleep(max(0.0, (last_end - datetime.now(UTC)).total_seconds()) + 3 * interval_s)
            messages = list(peer.messages)
            alive = gw.poll() is None
    finally:
        gw.terminate()
        sim.terminate()
        gw.wait(20)
        sim.wait(20)
        gw_log.close()
        sim_log.close()
        broker.stop()
    legit = check_legit(day, messages, hostile_ids(hostile_sent, messages, prefix))
    # each part's end, in hours of the day: its RSS then, its cycles' mean over it
    ends = [(p + 1) * hours / parts for p in range(len(rows))]
    rss, means = [r["rss_mib"] for r in rows], [r["cycles"]["mean_ms"] for r in rows]
    rss_grown, memory_flat = flat_memory(ends, rss)
    cycle_moved = slope(ends, means) * (ends[-1] - ends[0])
    logged = (workdir / "gateway.log").read_text()
    hostile_problems = [p for r in rows for p in r.pop("hostile_problems")]
    return {
        "hours": hours, "compression": compression, "seed": seed, "parts": rows, "rss_start_mib":
        round(rss_start / 1024, 1), "legit": legit, "hostile_sent": len(hostile_sent),
        "hostile_problems": hostile_problems, "gateway_alive": alive,
        "trend": {"rss_mib_per_hour": round(slope(ends, rss), 3), "rss_grown_mib": rss_grown,
                  "memory_flat": memory_flat, "cycle_ms_per_hour": round(slope(ends, means), 4),
                  "cycle_moved_ms": round(cycle_moved, 2),
                  "cycle_flat": cycle_moved <= FLAT_CYCLE_SHARE * means[0]},
        "tracebacks_logged": logged.count("Traceback"),
        "errors_logged": sum(" ERROR " in line for line in logged.splitlines()),
    }


def print_row(r: dict[str, Any]) -> None:
    c = r["cycles"]
    values = (r["hours"], r["sent"], r["hostile"], r["in_force"], r["rss_mib"], r["cpu_pct"], c["cycles"],
              c["mean_ms"], f"{c['p99_at_most_ms']:g}", c["overruns"], r["over_limit"])
    print(" ".join(f"{v:>{width}}" for v, (_, width) in zip(values, COLUMNS, strict=True)), flush=True)


def part_row(part: Part, messages: list[tuple[str, bytes, bool]], prefix: str, rss: int, cpu: float,
             elapsed: float, cycles: dict[str, Any]) -> dict[str, Any]:
    """One part's figures; `messages`: what the gateway published during it."""
    in_force, over, worst = None, 0, 0.0
    for topic, payload, _ in messages:
        if topic == f"{prefix}gateway/status":
            in_force = len(json.loads(payload)["active"])
        elif topic == f"{prefix}gateway/telemetry":
            t = json.loads(payload)
            excess = t["site"]["p_kw"] - t["effective"]["export_limit_kw"]
            over += excess > 2.0  # beyond the meter's and the loop's margin: a limit that was just tightened
            worst = max(worst, excess)
    return {"hours": part.hours, "sent": part.legit + part.hostile, "hostile": part.hostile,
            "in_force": "-" if in_force is None else in_force, "rss_mib": round(rss / 1024, 1),
            "cpu_pct": round(100 * cpu / elapsed, 1), "cycles": cycles, "over_limit": over,
            "worst_over_limit_kw": round(worst, 1), "hostile_problems": part.hostile_problems}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="how much of the day to run")
    ap.add_argument("--parts", type=int, default=8, help="parts of the day measured on their own")
    ap.add_argument("--compression", type=float, default=96.0, help="day seconds per real second")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(soak(args.hours, args.parts, args.compression, args.seed, Path(tmp)))
    rows, legit = res["parts"], res["legit"]
    first, last = rows[0], rows[-1]
    print(f"RSS {res['rss_start_mib']} MiB before the day, {first['rss_mib']} after its first part, "
          f"{last['rss_mib']} at its end; mean control cycle {first['cycles']['mean_ms']} ms in the first "
          f"part, {last['cycles']['mean_ms']} ms in the last; overruns "
          f"{sum(r['cycles']['overruns'] for r in rows)}")
    trend = res["trend"]
    print(f"trend per compressed hour (least squares over the {len(rows)} parts, from the end of the first): "
          f"RSS {trend['rss_mib_per_hour']:+.2f} MiB ({trend['rss_grown_mib']:+.1f} MiB over the day): "
          f"{'FLAT' if trend['memory_flat'] else 'NOT FLAT'} (at most {FLAT_RSS_MIB:g} MiB); cycle mean "
          f"{trend['cycle_ms_per_hour']:+.3f} ms ({trend['cycle_moved_ms']:+.2f} ms over the day): "
          f"{'FLAT' if trend['cycle_flat'] else 'NOT FLAT'} (at most {FLAT_CYCLE_SHARE:.0%} of the first "
          f"part's mean)")
    print(f"{legit['instructions']} instructions of the day, {legit['decisions_checked']} decisions checked "
          f"({legit['explained_by_hostile']} constrained by an accepted hostile instruction), "
          f"{len(legit['problems'])} wrong; {res['hostile_sent']} hostile cases, "
          f"{len(res['hostile_problems'])} not answered as they must be; {legit['heartbeat_answers']} "
          f"answers to heartbeats; gateway alive: {res['gateway_alive']}; tracebacks logged: "
          f"{res['tracebacks_logged']}")
    for p in (legit["problems"] + res["hostile_problems"])[:20]:
        print("  ", p[:400])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "day_soak.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {RESULTS / 'day_soak.json'}")
    ok = not legit["problems"] and not res["hostile_problems"] and not legit["heartbeat_answers"]
    return 0 if ok and res["gateway_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
