"""The upstream side of a site: a scenario player that speaks for the market side and the LDC over MQTT.

A scenario file (TOML, see examples/demo_scenario.toml) is a list of steps. Each step publishes its
messages (times in them are seconds relative to the step's start), prints what the gateway reports while
the step runs, and ends with a verdict measured from the gateway's telemetry: the metered PCC power
against the expected target or limit, and the responses the step expects.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.north.mqtt import MqttPeer

TIME_FIELDS = ("start", "end")


@dataclass
class Verdict:
    step: str
    met: bool
    detail: str


@dataclass
class Step:
    name: str
    duration_s: float
    send: list[dict[str, Any]] = field(default_factory=list)
    expect: dict[str, Any] = field(default_factory=dict)
    # Callables run at the step's start (e.g. a SCADA command through DNP3): the demo wires them by name.
    actions: list[str] = field(default_factory=list)


def load_scenario(path: Path | str) -> list[Step]:
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    return [Step(**s) for s in data["steps"]]


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_message(spec: dict[str, Any], resource_id: str, t0: datetime) -> tuple[str, str, bytes]:
    """(role, type, payload) of one scenario message; relative times become RFC 3339 instants."""
    spec = dict(spec)
    role, msg_type = spec.pop("role"), spec.pop("type")
    msg: dict[str, Any] = {"v": 1, "type": msg_type, "id": spec.pop("id"), "issuer": role,
                           "issued_at": rfc3339(datetime.now(UTC))}
    if msg_type == "dispatch":
        msg["resource_id"] = resource_id
    for key, value in spec.items():
        msg[key] = rfc3339(t0 + timedelta(seconds=value)) if key in TIME_FIELDS else value
    return role, msg_type, json.dumps(msg).encode()


def format_telemetry(t: dict[str, Any], elapsed_s: float) -> str:
    eff, site = t["effective"], t["site"]
    target = "—" if eff.get("target_kw") is None else f"{eff['target_kw']:7.1f}"
    devices = "  ".join(f"{d['id']} {d['p_kw']:6.1f}{'' if d['online'] else '(off)'}" for d in t["devices"])
    return (f"  t+{elapsed_s:5.1f}s  target {target}  export≤{eff['export_limit_kw']:6.1f} "
            f"import≤{eff['import_limit_kw']:6.1f}  binding {eff['binding']:<24} mode {eff['mode']:<11} "
            f"PCC {site['p_kw']:7.1f} kW  | {devices}")


class ScenarioPlayer:
    def __init__(self, broker_url: str, site_id: str, resource_id: str,
                 actions: dict[str, Callable[[], Any]] | None = None, out: Callable[[str], None] = print,
                 tolerance_kw: float = 5.0, on_step: Callable[[int, Step, datetime], None] | None = None,
                 on_telemetry: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.url, self.site_id, self.resource_id = broker_url, site_id, resource_id
        self.actions = actions or {}
        self.out = out
        # Told when each step starts and of every telemetry message (the demo's report plots them).
        self.on_step, self.on_telemetry = on_step, on_telemetry
        self.tolerance_kw = tolerance_kw
        self.prefix = f"tdc/v1/{site_id}/"

    async def play(self, steps: list[Step]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        async with MqttPeer(self.url) as peer:
            await peer.subscribe(self.prefix + "gateway/#")
            await peer.wait_for(lambda topic, p: topic.endswith("gateway/telemetry"), timeout=30)
            for n, step in enumerate(steps, 1):
                verdicts.append(await self._play_step(peer, n, step))
        return verdicts

    async def _play_step(self, peer: MqttPeer, n: int, step: Step) -> Verdict:
        self.out(f"\n▶ step {n}: {step.name}")
        t0 = datetime.now(UTC)
        if self.on_step is not None:
            self.on_step(n, step, t0)
        mark = len(peer.messages)
        for name in step.actions:
            result = self.actions[name]()
            if asyncio.iscoroutine(result):
                await result
            self.out(f"  → action: {name}")
        for spec in step.send:
            role, msg_type, payload = build_message(spec, self.resource_id, t0)
            await peer.publish(f"{self.prefix}{role}/{msg_type}", payload)
            self.out(f"  → {role} {msg_type} {spec['id']}: "
                     + ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("role", "type", "id")))
        seen = mark
        last_telemetry: dict[str, Any] | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + step.duration_s
        while (remaining := deadline - loop.time()) > 0:
            try:
                await peer.wait_for(lambda t, p: True, timeout=remaining, start=seen)
            except TimeoutError:
                break
            for topic, payload, _ in peer.messages[seen:]:
                last_telemetry = self._show(topic, payload, t0) or last_telemetry
            seen = len(peer.messages)
        return self._verdict(step, last_telemetry, peer.messages[mark:])

    def _show(self, topic: str, payload: bytes, t0: datetime) -> dict[str, Any] | None:
        kind = topic[len(self.prefix):]
        body = json.loads(payload)
        elapsed = (datetime.now(UTC) - t0).total_seconds()
        if kind == "gateway/telemetry":
            if self.on_telemetry is not None:
                self.on_telemetry(body)
            self.out(format_telemetry(body, elapsed))
            return body
        if kind.startswith("gateway/response/"):
            extra = "".join(f" {k}={body[k]}" for k in ("reason", "accepted_kw") if body.get(k) is not None)
            self.out(f"  ← response to {kind.rsplit('/', 1)[1]}: {body['ref']} {body['status']}{extra}")
        elif kind == "gateway/constraint":
            self.out(f"  ← constraint: {body['ref']} requested {body['requested_kw']} kW, deliverable "
                     f"{body['deliverable_kw']} kW, binding {body['binding']} ({body['reason']})")
        elif kind == "gateway/availability":
            windows = "; ".join(f"{w['cause']} export≤{w['max_export_kw']} import≤{w['max_import_kw']}"
                                for w in body["windows"]) or "no limits"
            self.out(f"  ← availability: {windows}")
        return None

    def _verdict(self, step: Step, telemetry: dict[str, Any] | None,
                 messages: list[tuple[str, bytes, bool]]) -> Verdict:
        exp = step.expect
        if telemetry is None:
            return Verdict(step.name, False, "no telemetry received")
        pcc = telemetry["site"]["p_kw"]
        checks: list[tuple[bool, str]] = []
        tol = exp.get("tolerance_kw", self.tolerance_kw)
        if "pcc_kw" in exp:
            checks.append((abs(pcc - exp["pcc_kw"]) <= tol,
                           f"PCC {pcc:.1f} kW vs target {exp['pcc_kw']} ± {tol}"))
        if "pcc_max_kw" in exp:
            checks.append((pcc <= exp["pcc_max_kw"] + 0.5, f"PCC {pcc:.1f} kW ≤ limit {exp['pcc_max_kw']}"))
        if "pcc_min_kw" in exp:
            checks.append((pcc >= exp["pcc_min_kw"] - 0.5, f"PCC {pcc:.1f} kW ≥ {exp['pcc_min_kw']}"))
        if "binding" in exp:
            b = telemetry["effective"]["binding"]
            checks.append((b == exp["binding"], f"binding {b}"))
        if "binding_prefix" in exp:
            b = telemetry["effective"]["binding"]
            checks.append((b.startswith(exp["binding_prefix"]), f"binding {b}"))
        for want in exp.get("responses", []):
            found = any(
                t.startswith(self.prefix + "gateway/response/")
                and all(json.loads(p).get(k) == v for k, v in want.items())
                for t, p, _ in messages
            )
            checks.append((found, f"response {want['ref']} {want['status']}"))
        met = all(ok for ok, _ in checks)
        return Verdict(step.name, met, "; ".join(text + ("" if ok else " ✗") for ok, text in checks))
