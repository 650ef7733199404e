"""The wire: every bad input of TDC-02 … TDC-06 decodes to the right Invalid reason; good input decodes to the
core's domain values; outbound messages encode, validate and round-trip; the JSON Schema exports."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest

from gateway.core import model as core
from gateway.core.model import Serving
from gateway.core.outbound import (
    Availability,
    Constraint,
    DeviceTelemetry,
    Effective,
    ErrorMsg,
    Response,
    SiteTelemetry,
    Status,
    Telemetry,
    Window,
)
from gateway.protocol import messages as wire
from gateway.protocol.codec import MAX_PAYLOAD, decode_inbound, encode_outbound
from gateway.protocol.schema import json_schema
from tests.core.script import Site

AT = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


def body(msg_type: str, **fields: Any) -> dict[str, Any]:
    """A valid inbound message of `msg_type`, with `fields` overriding (None removes a field)."""
    issuer = "ieso" if msg_type == "dispatch" else "ldc"
    base: dict[str, Any] = {"v": 1, "type": msg_type, "id": f"{msg_type}-1", "issuer": issuer,
                            "issued_at": "2025-06-02T12:00:00Z"}
    window = {"start": "2025-06-02T12:00:00Z", "end": "2025-06-02T12:05:00Z"}
    base |= {
        "dispatch": {"resource_id": "DER-1", "product": "energy", "kind": "algorithmic", "target_kw": 150.0,
                     **window},
        "envelope": {"export_limit_kw": 100.0, "reason": "thermal", **window},
        "default_envelope": {"export_limit_kw": 0.0},
        "override": {"action": "disconnect", "start": window["start"], "reason": "switching"},
        "outage": {"kind": "planned", "equipment": "feeder 55M3", **window},
        "service": {"service": "peak_reduction", "target_kw": 40.0, **window},
        "cancel": {"ref": "x"},
        "heartbeat": {},
    }[msg_type]
    base |= fields
    return {k: v for k, v in base.items() if v is not None}


def decode(msg_type: str, role: str | None = None, **fields: Any) -> core.Inbound | core.Invalid:
    data = body(msg_type, **fields)
    return decode_inbound(role or data.get("issuer", "ldc"), msg_type, json.dumps(data).encode())


def reason(result: core.Inbound | core.Invalid) -> tuple[str, str | None]:
    assert isinstance(result, core.Invalid), result
    return result.reason, result.id


# ---- TDC-02: malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"{not json", b"", b"\xff\xfe{}", b"[1, 2]", b'"dispatch"', b"42",
                                     b'{"v": 1}', b'{"id": 7}', b'{"id": ""}', b'{"id": null}',
                                     json.dumps({"id": "x" * 129}).encode(), b"[" * 100_000 + b"]" * 100_000])
def test_tdc_02_input_without_a_usable_id_is_invalid_with_no_id(payload: bytes) -> None:
    assert reason(decode_inbound("ieso", "dispatch", payload))[0] == "SCHEMA_INVALID"
    assert decode_inbound("ieso", "dispatch", payload).id is None


@pytest.mark.parametrize(("fields", "field"), [
    ({"target_kw": "150"}, "target_kw"),  # no silent coercion
    ({"target_kw": True}, "target_kw"),
    ({"target_kw": None}, "target_kw"),  # missing
    ({"end": None}, "end"),
    ({"surprise": 1}, "surprise"),  # unknown field
    ({"product": "capacity"}, "product"),
    ({"issued_at": "2025-06-02T12:00:00"}, "issued_at"),  # naive timestamp
    ({"start": "2025-06-02T12:00Z"}, "start"),  # RFC 3339 wants seconds
    ({"start": "2025-06-02"}, "start"),
    ({"start": 1748865600}, "start"),
    ({"id": "d" * 128, "target_kw": [150]}, "target_kw"),
    ({"v": "1"}, "v"),
    ({"v": True}, "v"),
    ({"v": None}, "v"),
])
def test_tdc_02_wrong_types_unknown_and_missing_fields_are_schema_invalid(fields: dict, field: str) -> None:
    result = decode("dispatch", **fields)
    assert reason(result) == ("SCHEMA_INVALID", fields.get("id", "dispatch-1"))
    assert result.detail.startswith(field), result.detail


def test_tdc_02_nan_is_schema_invalid() -> None:
    payload = json.dumps(body("dispatch")).replace("150.0", "NaN").encode()
    assert reason(decode_inbound("ieso", "dispatch", payload)) == ("SCHEMA_INVALID", "dispatch-1")


def test_tdc_02_limits_must_not_be_negative_and_an_envelope_needs_one() -> None:
    assert reason(decode("envelope", export_limit_kw=-1.0)) == ("SCHEMA_INVALID", "envelope-1")
    assert reason(decode("outage", import_limit_kw=-5.0)) == ("SCHEMA_INVALID", "outage-1")
    assert decode("envelope", export_limit_kw=None).detail.startswith("message: an envelope needs")


def test_tdc_02_oversize_payload_is_schema_invalid_with_its_id_when_it_parses() -> None:
    big = body("envelope", reason="other", id="e-big")
    big["padding"] = "x" * MAX_PAYLOAD
    result = decode_inbound("ldc", "envelope", json.dumps(big).encode())
    assert reason(result) == ("SCHEMA_INVALID", "e-big")
    assert "64" in result.detail or str(MAX_PAYLOAD) in result.detail
    assert reason(decode_inbound("ldc", "envelope", b"{" + b" " * MAX_PAYLOAD)) == ("SCHEMA_INVALID", None)


def test_tdc_02_payload_at_the_limit_is_accepted() -> None:
    data = body("envelope")
    raw = json.dumps(data).encode()
    raw = raw[:-1] + b" " * (MAX_PAYLOAD - len(raw)) + b"}"
    assert len(raw) == MAX_PAYLOAD
    assert isinstance(decode_inbound("ldc", "envelope", raw), core.Envelope)


# ---- version and authorization --------------------------------------------------------------------------


@pytest.mark.parametrize("v", [2, 0, 1.5, 2.0])
def test_another_protocol_version_is_unsupported(v: float) -> None:
    assert reason(decode("dispatch", v=v)) == ("UNSUPPORTED_VERSION", "dispatch-1")


@pytest.mark.parametrize(("role", "msg_type", "fields"), [
    ("ieso", "envelope", {}),  # an envelope on an ieso topic
    ("ieso", "override", {}),
    ("ieso", "service", {}),
    ("ldc", "dispatch", {}),
    ("ieso", "whatever", {}),
    ("ldc", "envelope", {"issuer": "ieso"}),  # issuer differs from the topic's role
    ("ieso", "cancel", {"issuer": "ldc"}),
    ("ldc", "envelope", {"type": "outage"}),  # type differs from the topic's type
])
def test_tdc_04_type_or_issuer_that_does_not_belong_to_the_topic_role_is_unauthorized(
        role: str, msg_type: str, fields: dict) -> None:
    data = body("envelope" if msg_type == "whatever" else msg_type, **fields)
    result = decode_inbound(role, msg_type, json.dumps(data).encode())
    assert reason(result) == ("UNAUTHORIZED", data["id"])
    assert (result.role, result.msg_type) == (role, msg_type)


def test_an_unknown_role_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="role"):
        decode_inbound("dso", "envelope", b"{}")


# ---- valid input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("msg_type", "role", "cls"), [
    ("dispatch", "ieso", core.Dispatch), ("envelope", "ldc", core.Envelope),
    ("default_envelope", "ldc", core.DefaultEnvelope), ("override", "ldc", core.Override),
    ("outage", "ldc", core.Outage), ("service", "ldc", core.Service), ("cancel", "ieso", core.Cancel),
    ("cancel", "ldc", core.Cancel), ("heartbeat", "ieso", core.Heartbeat),
    ("heartbeat", "ldc", core.Heartbeat),
])
def test_every_inbound_type_decodes_to_its_domain_value(msg_type: str, role: str, cls: type) -> None:
    raw = json.dumps(body(msg_type, issuer=role)).encode()
    msg = decode_inbound(role, msg_type, raw)
    assert type(msg) is cls
    assert (msg.id, msg.issuer, msg.issued_at, msg.raw) == (f"{msg_type}-1", role, AT, raw)
    assert len(msg.digest) == 64


def test_decoded_values_are_mapped_field_by_field_with_times_in_utc() -> None:
    msg = decode("dispatch", issued_at="2025-06-02T08:00:00-04:00", start="2025-06-02T13:00:00+01:00",
                 target_kw=150, ramp_kw_per_min=30)
    assert msg == core.Dispatch(id="dispatch-1", issuer="ieso", issued_at=AT, resource_id="DER-1",
                                product="energy", kind="algorithmic", target_kw=150.0, start=AT,
                                end=AT + timedelta(minutes=5), ramp_kw_per_min=30.0, raw=msg.raw,
                                digest=msg.digest)
    assert isinstance(msg.target_kw, float) and msg.start.tzinfo == UTC
    env = decode("envelope", import_limit_kw=20, load_limit_kw=5.5, replaces="e-0", ramp_s=10)
    assert (env.limits, env.replaces, env.ramp_s) == (core.Limits(100.0, 20.0, None, 5.5), "e-0", 10.0)
    outage = decode("outage")
    assert (outage.export_limit_kw, outage.import_limit_kw, outage.equipment) == (0.0, 0.0, "feeder 55M3")
    override = decode("override", action="hold")
    assert (override.action, override.end) == ("hold", None)


def test_tdc_06_digest_is_the_same_for_a_reserialised_message_and_differs_for_other_content() -> None:
    data = body("dispatch")
    a = decode_inbound("ieso", "dispatch", json.dumps(data).encode())
    reordered = dict(reversed(list(data.items())), issued_at="2025-06-02T14:00:00+02:00", target_kw=150)
    b = decode_inbound("ieso", "dispatch", json.dumps(reordered, indent=2).encode())
    c = decode("dispatch", target_kw=151.0)
    assert a.digest == b.digest != c.digest


# ---- outbound ---------------------------------------------------------------------------------------------

TELEMETRY = Telemetry("site-1", 7, AT, SiteTelemetry(150.0, 2.0, 1.01, 60.0, 30.0, 250.0, 55.5),
                      Effective(150.0, 300.0, 400.0, "dispatch:d1", "normal"), (Serving("d1", 150.0),),
                      (DeviceTelemetry("pv1", True, False, 200.0, 0.0, 200.0, None),
                       DeviceTelemetry("pv2", False, True, 0.0, 0.0, None, None)))
OUTBOUND = [
    ("gateway/response/ieso", Response("ieso", "d1", "dispatch", "constrained", AT, "DISTRIBUTION_CONSTRAINT",
                                       100.0)),
    ("gateway/response/ldc", Response("ldc", "e1", "envelope", "received", AT)),
    ("gateway/error", ErrorMsg("ieso", "dispatch", "SCHEMA_INVALID", "not UTF-8 JSON", b"{oops", AT)),
    ("gateway/constraint", Constraint("d1", 200.0, 100.0, "envelope:e1", "DISTRIBUTION_CONSTRAINT", AT,
                                      AT + timedelta(minutes=5), AT)),
    ("gateway/availability", Availability((Window(AT, None, 0.0, 400.0, "override:o1"),
                                           Window(AT, AT + timedelta(hours=1), 0.0, 0.0, "outage:x")), AT)),
    ("gateway/telemetry", TELEMETRY),
    ("gateway/status", Status("site-1", AT, "online", "failsafe", {"ieso": "ok", "ldc": "lost"}, ("e1",),
                              3, 4, "0.1.0")),
]


@pytest.mark.parametrize(("suffix", "out"), OUTBOUND, ids=[s for s, _ in OUTBOUND])
def test_outbound_encodes_to_its_topic_and_round_trips_through_the_wire_model(suffix: str, out: Any) -> None:
    got_suffix, payload = encode_outbound(out, "site-1")
    assert got_suffix == suffix
    data = json.loads(payload)
    assert (data["v"], data["issuer"], data["issued_at"]) == (1, "gateway", "2025-06-02T12:00:00Z")
    model = {m.__name__.lower(): m for m in wire.OUTBOUND}[data["type"]]
    assert json.loads(model.model_validate_json(payload).model_dump_json(exclude_unset=True)) == data


def test_outbound_content_on_the_wire() -> None:
    _, payload = encode_outbound(OUTBOUND[0][1], "site-1")
    data = json.loads(payload)
    assert {k: data[k] for k in ("type", "ref", "ref_type", "status", "reason", "accepted_kw", "at")} == {
        "type": "response", "ref": "d1", "ref_type": "dispatch", "status": "constrained",
        "reason": "DISTRIBUTION_CONSTRAINT", "accepted_kw": 100.0, "at": "2025-06-02T12:00:00Z"}
    assert "detail" not in data  # optional fields that do not apply are left out
    _, payload = encode_outbound(OUTBOUND[2][1], "site-1")
    assert json.loads(payload)["topic"] == "tdc/v1/site-1/ieso/dispatch"
    tele = json.loads(encode_outbound(TELEMETRY, "site-1")[1])
    assert tele["serving"] == [{"ref": "d1", "kw": 150.0}] and tele["replayed"] is False
    assert tele["devices"][1]["setpoint_kw"] is None  # unknown is null, not missing
    status = json.loads(encode_outbound(OUTBOUND[6][1], "site-1")[1])
    assert (status["devices"], status["comms"], status["active"]) == ({"online": 3, "total": 4},
                                                                     {"ieso": "ok", "ldc": "lost"}, ["e1"])


def test_error_carries_the_first_200_bytes_of_the_payload_escaped() -> None:
    payload = b"\xff\x00" + b"a" * 300
    _, raw = encode_outbound(ErrorMsg("ldc", "envelope", "SCHEMA_INVALID", "bad", payload, AT), "site-1")
    head = json.loads(raw)["payload"]
    assert head == "\\xff\x00" + "a" * 198


def test_outbound_ids_are_derived_from_the_content() -> None:
    a = json.loads(encode_outbound(OUTBOUND[1][1], "site-1")[1])["id"]
    b = json.loads(encode_outbound(OUTBOUND[1][1], "site-1")[1])["id"]
    c = json.loads(encode_outbound(Response("ldc", "e1", "envelope", "accepted", AT), "site-1")[1])["id"]
    assert a == b != c and a.startswith("gw-")


def test_outbound_is_validated() -> None:
    with pytest.raises(ValueError, match="status"):
        encode_outbound(Response("ieso", "d1", "dispatch", "maybe", AT), "site-1")


# ---- JSON Schema -------------------------------------------------------------------------------------------


def test_json_schema_exports_every_message_and_every_reference_resolves() -> None:
    schema = json_schema()
    json.dumps(schema)  # plain JSON
    defs = schema["$defs"]
    names = {ref["$ref"].removeprefix("#/$defs/") for ref in schema["oneOf"]}
    assert names == {"Dispatch", "Cancel", "Heartbeat", "Envelope", "DefaultEnvelope", "Override", "Outage",
                     "Service", "Response", "Error", "Telemetry", "Status", "Constraint", "Availability"}

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    assert all(r.removeprefix("#/$defs/") in defs for r in refs(schema))
    dispatch = defs["Dispatch"]
    assert dispatch["additionalProperties"] is False
    assert set(dispatch["required"]) == {"v", "type", "id", "issuer", "issued_at", "resource_id", "product",
                                         "kind", "target_kw", "start", "end"}
    assert dispatch["properties"]["issued_at"]["format"] == "date-time"
    assert dispatch["properties"]["id"]["maxLength"] == 128
    assert defs["Envelope"]["properties"]["export_limit_kw"]["anyOf"][0]["minimum"] == 0


def test_the_shipped_schema_and_protocol_document_are_the_code_s() -> None:
    """docs/tdc-v1.schema.json is what `der-gateway schema` writes, and PROTOCOL §4 lists every reason the
    code can send (e.g. TOO_MANY_INSTRUCTIONS): a change to the messages must regenerate the one and
    update the other."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    assert json.loads((docs / "tdc-v1.schema.json").read_text()) == json.loads(json.dumps(json_schema())), (
        "docs/tdc-v1.schema.json is stale: run der-gateway schema --out docs/tdc-v1.schema.json")
    protocol = (docs / "PROTOCOL.md").read_text()
    listed = protocol[protocol.index("Reasons: "):protocol.index("**error**")]
    assert set(re.findall(r"`([A-Z_]+)`", listed)) == set(get_args(wire.Reason))


def test_everything_the_engine_says_in_a_busy_hour_encodes() -> None:
    site = Site(keep_alive=False)
    site.send("envelope", "e1", export_limit_kw=100.0, generation_limit_kw=300.0, ramp_s=30.0)
    site.send("outage", "o1", start=600, end=1200)
    site.send("dispatch", "d1", target_kw=200.0, ramp_kw_per_min=60.0)
    site.send("service", "s1", target_kw=50.0, end=900)
    site.send("override", "h1", action="hold", start=100, end=200)
    site.send("override", "x1", action="disconnect", start=1300)
    site.send("cancel", "c1", issuer="ieso", ref="nope")
    site.send("envelope", "e2", export_limit_kw=80.0, replaces="e1", start=300)
    site.receive(core.Invalid("ldc", "envelope", None, "SCHEMA_INVALID", "not UTF-8 JSON", b"\xff{"))
    for _ in range(60):
        site.cycle(30)
    assert {type(o).__name__ for o in site.outbound} == {"Response", "ErrorMsg", "Constraint", "Availability"}
    for out in site.outbound:
        suffix, payload = encode_outbound(out, "site-1")
        assert suffix.startswith("gateway/") and json.loads(payload)["v"] == 1
