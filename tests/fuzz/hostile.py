"""Malformed and hostile inbound payloads for every inbound topic (PROTOCOL §1), as hypothesis strategies,
and what the gateway must answer to each (TDC-02: answered, and rejected input changes nothing).

Shared by tests/fuzz (in-process and over MQTT) and benchmarks/fuzz_soak.py (a long run against a
gateway process).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as with_seed
from hypothesis import strategies as st

from gateway.core import model as core
from gateway.protocol import messages as wire
from gateway.protocol.codec import decode_inbound

ROLES = tuple(wire.INBOUND)
OWN_TOPICS = [(role, t) for role, types in wire.INBOUND.items() for t in types]
CROSS_TOPICS = [(role, t) for role in ROLES for other, types in wire.INBOUND.items() if other != role
                for t in types if t not in wire.INBOUND[role]]  # e.g. an envelope on an ieso topic
# Topic segments that are no inbound type. No '/', '+', '#', control characters or non-characters:
# mosquitto disconnects a client that publishes such a topic, and the gateway (rightly) ignores a topic
# of another shape, so neither could reach it.
_SEGMENT = st.characters(exclude_characters="/+#", exclude_categories=("Cs", "Cc", "Cn"))
UNKNOWN_TYPES = st.one_of(st.sampled_from(["telemetry", "response", "status", "Envelope", "DISPATCH",
                                           "dispatch ", "", "x" * 200, "..", "$SYS", "envelope\u00a0"]),
                          st.text(_SEGMENT, max_size=40))
PRIMED_IDS = ("env-1", "d-1", "hold-1")  # in force in the engine the in-process fuzz starts from
SYNC_REF = "~no-such-instruction~"  # never an id of a fuzz case: fuzz ids are fz-…, PRIMED_IDS or hostile


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Case:
    role: str
    msg_type: str
    payload: bytes
    kind: str  # which mutation made it, for reports

    def __repr__(self) -> str:  # hypothesis prints failing cases: keep a 100 kB payload readable
        shown = self.payload if len(self.payload) <= 300 else self.payload[:300] + b"..."
        return f"Case({self.role}/{self.msg_type!r}, {self.kind}, {len(self.payload)} B: {shown!r})"


@dataclass(frozen=True)
class Expected:
    """What must come back: an `error` (no usable id), nothing (a valid heartbeat), or `received` and
    one decision for `ref` (the message's id)."""

    answer: str  # "error" | "none" | "decision"
    ref: str | None
    rejected: bool  # the codec refused it (Invalid): nothing may change


def expected(case: Case) -> Expected:
    return expected_of(decode_inbound(case.role, case.msg_type, case.payload))


def expected_of(msg: core.Inbound | core.Invalid) -> Expected:
    if isinstance(msg, core.Invalid):
        return Expected("error" if msg.id is None else "decision", msg.id, True)
    if isinstance(msg, core.Heartbeat):
        return Expected("none", msg.id, False)
    return Expected("decision", msg.id, False)


# ---- valid messages, the starting point of every mutation ---------------------------------------------


def valid_message(role: str, msg_type: str, msg_id: str, now: datetime, resource_id: str) -> dict[str, Any]:
    """A message that the gateway would accept on its topic (for an unknown type, the common fields)."""
    start, end = iso(now - timedelta(seconds=1)), iso(now + timedelta(minutes=10))
    body: dict[str, Any] = {
        "dispatch": {"resource_id": resource_id, "product": "energy", "kind": "algorithmic",
                     "target_kw": 50.0, "start": start, "end": end, "ramp_kw_per_min": 600.0},
        "envelope": {"start": start, "end": end, "export_limit_kw": 100.0, "import_limit_kw": 200.0,
                     "reason": "thermal", "ramp_s": 10.0},
        "default_envelope": {"export_limit_kw": 40.0},
        "override": {"action": "hold", "start": start, "end": end, "reason": "switching"},
        "outage": {"kind": "planned", "start": iso(now + timedelta(minutes=5)), "end": end,
                   "equipment": "feeder 55M3"},
        "service": {"service": "peak_reduction", "target_kw": 20.0, "start": start, "end": end},
        "cancel": {"ref": "env-1" if role == "ldc" else "d-1"},
    }.get(msg_type, {})
    return {"v": 1, "type": msg_type, "id": msg_id, "issuer": role, "issued_at": iso(now), **body}


# ---- hostile values -------------------------------------------------------------------------------------

RAW = "@@raw@@"  # a placeholder string, replaced in the serialised bytes by raw JSON text or bytes
HUGE_NUMBERS = ["1e400", "-1e400", "1e-400", "1" + "0" * 400, "-" + "9" * 4299, "9" * 5000,
                "1.7976931348623157e308", "4.9e-324", "123456789012345678901234567890.5", "-0", "1E+2",
                "0.0000000000000000000000000000000001"]
NOT_NUMBERS = ["NaN", "Infinity", "-Infinity", "nan", "inf", "+1", "01", ".5", "1.", "0x10", "1_000"]
INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\xe2\x82",
                b"\x80", b"\xf4\x90\x80\x80", b"\xfe\xff"]
ODD_STRINGS = ["", " ", "\ud800", "a\udfff", "\u0000", "\u202eevil", "💥" * 40, "x" * 300, "\\", '"',
               "\n\r\t", "null", "<script>", "' OR 1=1 --", "%s%n", "\u2028"]
ODD_TIMES = ["2025-13-45T99:99:99Z", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00",
             "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2025-06-01T12:00:00", "2025-06-01",
             "2025-06-01T12:00:00+24:00", "2025-06-01T12:00:00.99999999999999999999Z", "2025-06-01t12:00:00z",
             "1970-01-01T00:00:00Z", "2025-02-29T00:00:00Z", "+002025-06-01T12:00:00Z", "now", "P1D",
             "2025-06-01T12:00:00Z ", "２０２５-06-01T12:00:00Z"]
ODD_NUMBERS: list[Any] = [-1e308, 1e308, -0.0, 5e-324, 1e15, -1e15, 10**20, -(10**20), 0, -1, 2**63, 3000.0,
                          -3000.0, 1e12, 6.4e10, 3.1e10, True, False]
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False,
                                                                            allow_infinity=False),
                         st.text(max_size=30))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)

TIME_FIELDS = {"issued_at", "start", "end"}
NUMBER_FIELDS = {"target_kw", "ramp_kw_per_min", "export_limit_kw", "import_limit_kw", "generation_limit_kw",
                 "load_limit_kw", "ramp_s", "v"}


def _field_values(key: str, now: datetime) -> st.SearchStrategy[Any]:
    """Near-valid values for one field: of the right kind but wrong, or of another kind."""
    if key in TIME_FIELDS:
        shifted = [iso(now + timedelta(days=d)) for d in (-3650, -1, 1, 3650)]
        return st.sampled_from([*ODD_TIMES, *shifted, 1735689600, None])
    if key in NUMBER_FIELDS:
        return st.one_of(st.sampled_from(ODD_NUMBERS), st.floats(allow_nan=False, allow_infinity=False),
                         st.sampled_from(["5", None, [], {}]))
    if key in ("type", "issuer"):
        return st.sampled_from([*ROLES, "gateway", *(t for _, t in OWN_TOPICS), "", None, 1, "IESO"])
    named = {"id": "fz-" + "i" * 126, "ref": "d-1", "resource_id": "NOT-OURS"}
    return st.one_of(st.sampled_from([*ODD_STRINGS, named.get(key, "other"), None, 1, [], {}]),
                     st.text(max_size=50))


def _dumps(body: dict[str, Any] | list[tuple[str, Any]]) -> bytes:
    pairs = body.items() if isinstance(body, dict) else body
    # ensure_ascii keeps a lone surrogate as \ud800 in the text: valid bytes, hostile content
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()


def _with_raw(body: dict[str, Any], key: str, raw: bytes) -> bytes:
    return _dumps({**body, key: RAW}).replace(json.dumps(RAW).encode(), raw, 1)


def _nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + "0" + closer * depth).encode()


Draw = Callable[[st.SearchStrategy[Any]], Any]
Mutation = Callable[[Draw, dict[str, Any], datetime], bytes]


def _random_bytes(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    return draw(st.binary(max_size=400))


def _random_json(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    return json.dumps(draw(JSON_VALUES)).encode()


def _invalid_utf8(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    key = draw(st.sampled_from([k for k, v in body.items() if isinstance(v, str)]))
    bad = draw(st.sampled_from(INVALID_UTF8))
    return _with_raw(body, key, b'"' + str(body[key])[:8].encode() + bad + b'"')


def _deep(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    depth = draw(st.sampled_from([30, 200, 1000, 10_000, 100_000]))
    nested = _nested(depth, draw(st.sampled_from(["[", '{"a":'])))
    where = draw(st.sampled_from(["payload", "field", "extra"]))
    if where == "payload":
        return nested
    key = draw(st.sampled_from(sorted(body))) if where == "field" else "nested"
    return _with_raw(body, key, nested)


def _huge_number(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    keys = sorted(NUMBER_FIELDS & body.keys()) or sorted(body)
    return _with_raw(body, draw(st.sampled_from(keys)), draw(st.sampled_from(HUGE_NUMBERS)).encode())


def _not_a_number(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    key = draw(st.sampled_from([*sorted(NUMBER_FIELDS & body.keys()), "id", "start"]))
    return _with_raw(body, key, draw(st.sampled_from(NOT_NUMBERS)).encode())


def _wrong_type(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    key = draw(st.sampled_from(sorted(body)))
    value = draw(JSON_VALUES.filter(lambda v: type(v) is not type(body[key])))
    return _dumps({**body, key: value})


def _missing(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    return _missing_key(body, draw(st.sampled_from(sorted(body))))


def _extra(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    key = draw(st.one_of(st.sampled_from(["colour", "ID", "type ", "__proto__", "constructor", "ref",
                                          "replaces", "end"]), st.text(max_size=20)))
    return _dumps([*body.items(), (key, draw(JSON_VALUES))]) if key in body else _dumps(
        {**body, key: draw(JSON_VALUES)})


def _duplicate_key(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    key = draw(st.sampled_from(sorted(body)))
    other = draw(st.one_of(_field_values(key, now), st.just(body[key])))
    pairs = list(body.items())
    pairs.insert(draw(st.integers(0, len(pairs))), (key, other))
    return _dumps(pairs)


def _long_id(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    n = draw(st.sampled_from([128, 129, 1000, 70_000]))
    return _dumps({**body, "id": draw(st.sampled_from(["x", "é", "💥"])) * n})


def _odd_id(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    return _dumps({**body, "id": draw(st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=20)))})


def _wrong_version(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    choice = draw(st.sampled_from([0, 2, -1, "1", 1.0, True, None, [1], {"v": 1}, 1.5, 10**30, "1e400",
                                   "missing"]))
    if choice == "missing":
        return _missing_key(body, "v")
    if choice == "1e400":
        return _with_raw(body, "v", b"1e400")
    return _dumps({**body, "v": choice})


def _missing_key(body: dict[str, Any], key: str) -> bytes:
    return _dumps({k: v for k, v in body.items() if k != key})


def _near_valid(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    """One field, or two, of a valid message mutated: the inputs that get furthest into the gateway."""
    keys = draw(st.lists(st.sampled_from(sorted(body)), min_size=1, max_size=2, unique=True))
    return _dumps({**body, **{k: draw(_field_values(k, now)) for k in keys}})


def _valid(draw: Draw, body: dict[str, Any], now: datetime) -> bytes:
    return _dumps(body)


MUTATIONS: dict[str, Mutation] = {
    "random bytes": _random_bytes, "random json": _random_json, "invalid utf-8": _invalid_utf8,
    "deep nesting": _deep, "huge number": _huge_number, "nan/infinity": _not_a_number,
    "wrong type": _wrong_type, "missing field": _missing, "extra field": _extra,
    "duplicate key": _duplicate_key, "long id": _long_id, "odd id": _odd_id, "wrong v": _wrong_version,
    "near-valid": _near_valid, "valid": _valid,
}


@st.composite
def hostile_cases(draw: Draw, now: datetime, resource_id: str) -> Case:
    """One payload on one inbound topic: a type of the role, of the other role, or no type at all."""
    # mostly a role's own types, which get furthest (past the role check, into the schema and the core)
    where = draw(st.integers(0, 9))
    if where < 7:
        role, msg_type = draw(st.sampled_from(OWN_TOPICS))
    elif where == 7:
        role, msg_type = draw(st.sampled_from(CROSS_TOPICS))
    else:
        role, msg_type = draw(st.sampled_from(ROLES)), draw(UNKNOWN_TYPES)
    kind = draw(st.sampled_from(sorted(MUTATIONS)))
    msg_id = draw(st.one_of(st.sampled_from(PRIMED_IDS), st.from_regex(r"fz-[0-9a-z]{1,10}", fullmatch=True)))
    body = valid_message(role, msg_type, msg_id, now, resource_id)
    return Case(role, msg_type, MUTATIONS[kind](draw, body, now), kind)


def sync_message(sync_id: str, now: datetime) -> bytes:
    """An LDC cancel of nothing: always answered (rejected UNKNOWN_REF), never changes anything. Sent
    after a case, its answer closes the case's answers (the gateway answers in order)."""
    return _dumps({"v": 1, "type": "cancel", "id": sync_id, "issuer": "ldc", "issued_at": iso(now),
                   "ref": SYNC_REF})


# ---- answers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A response (ref, status) or an error, as the gateway published it or the engine produced it."""

    kind: str  # "response" | "error"
    ref: str | None = None
    status: str | None = None


DECISIONS = ("accepted", "constrained", "rejected")


def answer_problem(exp: Expected, answers: list[Answer], alone: bool = False) -> str | None:
    """None when `answers` is what TDC-01/TDC-02 ask for `exp`; else what is wrong.

    `alone`: the answers are the engine's to this message only. Over MQTT a control cycle's messages may
    come between (started, completed, or a fresh constrained for this or an earlier instruction, §4), so
    only `received` followed by a decision is required there.
    """
    errors = [a for a in answers if a.kind == "error"]
    statuses = [a.status for a in answers if a.kind == "response" and a.ref == exp.ref]
    if exp.answer == "error":
        return None if len(errors) == 1 else f"expected one error, got {answers}"
    if exp.answer == "none":
        return None if not errors and not statuses else f"a valid heartbeat is not answered, got {answers}"
    if "received" not in statuses:
        return f"no received for {exp.ref!r}: {answers}"
    after = statuses[statuses.index("received") + 1:]
    if not after or after[0] not in DECISIONS:
        return f"received for {exp.ref!r} is not followed by a decision: {answers}"
    if alone and (statuses[0] != "received" or sum(s in DECISIONS for s in statuses) != 1):
        return f"expected received then exactly one decision for {exp.ref!r}, got {answers}"
    if exp.rejected and after[0] != "rejected":
        return f"the codec refused it, yet the decision was {after[0]}"
    return None


def sample(strategy: st.SearchStrategy[Any], n: int, seed: int | None = None) -> list[Any]:
    """`n` examples drawn by hypothesis outside a test (a fixed `seed` repeats them)."""
    out: list[Any] = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x: Any) -> None:
        out.append(x)

    run = collect if seed is None else with_seed(seed)(collect)
    while len(out) < n:  # hypothesis may stop a little short of max_examples
        run()
    return out[:n]


async def exchange(peer: Any, prefix: str, cases: list[Case], tag: str, timeout: float = 60.0
                   ) -> list[list[Answer]]:
    """Publish each case followed by a sync message, and sort what the gateway answered by case.

    `peer` (an MqttPeer subscribed to `{prefix}gateway/#`) publishes on both roles' topics. The gateway
    answers in order, so everything between the answers to two syncs belongs to the case between them.
    """
    start = len(peer.messages)
    now = datetime.now(UTC)
    for i, case in enumerate(cases):
        await peer.publish(f"{prefix}{case.role}/{case.msg_type}", case.payload)
        await peer.publish(f"{prefix}ldc/cancel", sync_message(f"sync-{tag}-{i}", now))
    last = f"sync-{tag}-{len(cases) - 1}"
    await peer.wait_for(lambda t, p: (answer := _answer(prefix, t, p)) is not None
                        and (answer.ref, answer.status) == (last, "rejected"), timeout=timeout, start=start)
    windows: list[list[Answer]] = [[] for _ in cases]
    i = 0
    for topic, payload, _ in peer.messages[start:]:
        answer = _answer(prefix, topic, payload)
        if answer is None or i == len(cases):
            continue
        if answer.ref == f"sync-{tag}-{i}":
            i += answer.status == "rejected"
            continue
        windows[i].append(answer)
    return windows


def _answer(prefix: str, topic: str, payload: bytes) -> Answer | None:
    if topic == f"{prefix}gateway/error":
        return Answer("error")
    if topic.startswith(f"{prefix}gateway/response/"):
        body = json.loads(payload)
        return Answer("response", body["ref"], body["status"])
    return None
