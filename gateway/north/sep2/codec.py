"""The 2030.5 wire codec: envoy-schema's pydantic-xml models (the 1.x line, CSIP-AUS 1.2) behind a safe
parser and the CSIP-AUS namespace guard. The only module of the gateway that imports envoy_schema, so
its API churn stays here; the rest of the client uses the local names below.

The guard exists because of envoy-schema's trap: a DERControl whose `csipaus` prefix is bound to another
CSIP-AUS namespace (1.3's `https://csipaus.org/ns/v1.3`) parses without error and with `opModExpLimW`
None. A missing limit must never read as "no limit", so `parse` refuses (a) anything in a csipaus.org
namespace other than the one the model speaks, and (b) any CSIP-AUS element, and any element inside a
DERControl or DefaultDERControl, that the model did not bind: it parses, emits the model back, and
every such element of the input must come back.
"""

from __future__ import annotations

from typing import TypeVar

import pydantic
from envoy_schema.server.schema.csip_aus.connection_point import ConnectionPointRequest as ConnectionPoint
from envoy_schema.server.schema.sep2 import der, event, metering, metering_mirror, response, types
from envoy_schema.server.schema.sep2.base import BaseXmlModelWithNS, nsmap
from envoy_schema.server.schema.sep2.der_control_types import ActivePower
from envoy_schema.server.schema.sep2.device_capability import DeviceCapabilityResponse as DeviceCapability
from envoy_schema.server.schema.sep2.end_device import EndDeviceListResponse as EndDeviceList
from envoy_schema.server.schema.sep2.end_device import EndDeviceRequest as EndDevice
from envoy_schema.server.schema.sep2.end_device import EndDeviceResponse
from envoy_schema.server.schema.sep2.end_device import RegistrationResponse as Registration
from envoy_schema.server.schema.sep2.error import ErrorResponse as Error
from envoy_schema.server.schema.sep2.function_set_assignments import (
    FunctionSetAssignmentsListResponse as FunctionSetAssignmentsList,
)
from envoy_schema.server.schema.sep2.time import TimeResponse as Time
from lxml import etree

NS: str = nsmap[""]  # urn:ieee:std:2030.5:ns
CSIPAUS_NS: str = nsmap["csipaus"]  # https://csipaus.org/ns: CSIP-AUS 1.2, the line envoy-schema 1.x speaks
CSIPAUS_VERSION = "1.2"
CONTENT_TYPE = "application/sep+xml"
MAX_BYTES = 1 << 20  # a page of a list is a few kB; anything near this is not a 2030.5 resource

# The resources the client reads (discovery, controls) and writes (reports, Responses), by their 2030.5
# names. envoy-schema names two different classes DERControlResponse: the DERControl resource (der) and
# the Response to one (response); here they are DERControl and ControlResponse.
DERProgramList = der.DERProgramListResponse
DERProgram = der.DERProgramResponse
DERControlList = der.DERControlListResponse
DERControl = der.DERControlResponse
DERControlBase = der.DERControlBase
DefaultDERControl = der.DefaultDERControl
DERList = der.DERListResponse
DER = der.DER
DERCapability = der.DERCapability
DERSettings = der.DERSettings
DERStatus = der.DERStatus
DERAvailability = der.DERAvailability
ConnectStatus = der.ConnectStatusTypeValue
InverterStatus = der.InverterStatusTypeValue
OperationalModeStatus = der.OperationalModeStatusTypeValue
StateOfChargeStatus = der.StateOfChargeStatusValue
ControlResponse = response.DERControlResponse
MirrorUsagePoint = metering_mirror.MirrorUsagePoint
MirrorUsagePointList = metering_mirror.MirrorUsagePointListResponse
MirrorMeterReading = metering_mirror.MirrorMeterReading
MirrorReadingSet = metering_mirror.MirrorReadingSet
ReadingType = metering.ReadingType
Reading = metering.Reading
DateTimeInterval = types.DateTimeIntervalType
EventStatus = event.EventStatus
# enums
ResponseType = response.ResponseType
EventStatusType = event.EventStatusType
DERType = der.DERType
DERControlType = der.DERControlType
DOESupportedMode = der.DOESupportedMode
ConnectStatusType = der.ConnectStatusType
InverterStatusType = der.InverterStatusType
OperationalModeStatusType = der.OperationalModeStatusType
RoleFlagsType = types.RoleFlagsType
ServiceKind = types.ServiceKind
UomType = types.UomType
KindType = types.KindType
DataQualifierType = types.DataQualifierType
FlowDirectionType = types.FlowDirectionType
AccumulationBehaviourType = types.AccumulationBehaviourType
CommodityType = types.CommodityType
PhaseCode = types.PhaseCode

__all__ = [
    "CONTENT_TYPE", "CSIPAUS_NS", "CSIPAUS_VERSION", "DER", "MAX_BYTES", "NS",
    "AccumulationBehaviourType", "ActivePower", "CommodityType", "ConnectStatus", "ConnectStatusType",
    "ConnectionPoint", "ControlResponse", "DERAvailability", "DERCapability", "DERControl",
    "DERControlBase", "DERControlList", "DERControlType", "DERList", "DERProgram", "DERProgramList",
    "DERSettings", "DERStatus", "DERType", "DOESupportedMode", "DataQualifierType", "DateTimeInterval",
    "DefaultDERControl", "DeviceCapability", "EndDevice", "EndDeviceList", "EndDeviceResponse", "Error",
    "EventStatus", "EventStatusType", "FlowDirectionType", "FunctionSetAssignmentsList",
    "InverterStatus", "InverterStatusType", "KindType", "MirrorMeterReading", "MirrorReadingSet",
    "MirrorUsagePoint", "MirrorUsagePointList", "OperationalModeStatus", "OperationalModeStatusType",
    "PhaseCode", "Reading", "ReadingType", "Registration", "ResponseType", "RoleFlagsType",
    "Sep2Error", "ServiceKind", "Time", "UomType", "active_power", "emit", "parse", "watts",
]

M = TypeVar("M", bound=BaseXmlModelWithNS)

# Elements whose every descendant the model must bind, whatever its namespace: a control field the
# model dropped (a misspelt or newer one) would otherwise vanish as silently as a CSIP-AUS limit.
_CONTROL_SCOPES = frozenset({f"{{{NS}}}DERControl", f"{{{NS}}}DefaultDERControl"})
_VERSION_FIX = (f"the server must speak CSIP-AUS {CSIPAUS_VERSION} ({CSIPAUS_NS}); check the CSIP-AUS "
                "version in the [sep2] section of the site file against the server's")
_MULTIPLIERS = range(-9, 10)  # 2030.5 PowerOfTenMultiplierType: "any integer between -9 and 9"
_INT16 = range(-(1 << 15), 1 << 15)  # ActivePower.value is Int16

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False,
    remove_comments=True, remove_pis=True,
)


class Sep2Error(ValueError):
    """A 2030.5 message the client refuses: which resource, which element, what is wrong and the fix."""

    def __init__(self, resource: str, element: str, problem: str, fix: str) -> None:
        self.resource, self.element, self.problem, self.fix = resource, element, problem, fix
        super().__init__(f"2030.5 {resource}: {element}: {problem}; {fix}")


def _tag(model: type[BaseXmlModelWithNS]) -> str:
    """The model's root element, in Clark notation."""
    return f"{{{nsmap[model.__xml_ns__ or '']}}}{model.__xml_tag__ or model.__name__}"


def _local(clark: str) -> str:
    return clark.rpartition("}")[2]


def _namespace(clark: str) -> str:
    return clark[1:].partition("}")[0] if clark.startswith("{") else ""


_Where = tuple[tuple[str, int], ...]  # (Clark tag, index among same-tag siblings) from the root; "@attr" last


def _walk(el: etree._Element, path: _Where, in_scope: bool, out: dict[_Where, bool]) -> None:
    """Every element and attribute below `el` by path, with whether the guard requires it to bind."""
    for name in el.attrib:
        out[(*path, (f"@{name}", 0))] = in_scope or _namespace(name) == CSIPAUS_NS
    seen: dict[str, int] = {}
    for child in el:
        if not isinstance(child.tag, str):  # an entity reference left unresolved
            continue
        i = seen[child.tag] = seen.get(child.tag, -1) + 1
        child_path = (*path, (child.tag, i))
        # an empty element carries nothing to drop (envoy serves a ConnectionPoint with no id as an empty
        # connectionPointId, which the model reads as None)
        empty = not (child.text or "").strip() and not len(child) and not child.attrib
        out[child_path] = (in_scope or _namespace(child.tag) == CSIPAUS_NS) and not empty
        _walk(child, child_path, in_scope or child.tag in _CONTROL_SCOPES, out)


def _shown(path: _Where) -> str:
    """DERControl/DERControlBase/opModExpLimW[2], …/@attr: local names, as a person reads the XML."""
    return "/".join(("@" if tag.startswith("@") else "") + _local(tag) + (f"[{i + 1}]" if i else "")
                    for tag, i in path)


def _received(resource: str, root: etree._Element) -> dict[_Where, bool]:
    """What the input holds, by path; guard (a): nothing in another CSIP-AUS namespace. Checked before
    the model is tried, whose own complaint (a required CSIP-AUS field missing) would hide the cause."""
    received: dict[_Where, bool] = {}
    _walk(root, ((root.tag, 0),), root.tag in _CONTROL_SCOPES, received)
    for path in received:
        ns = _namespace(path[-1][0].lstrip("@"))
        if "csipaus.org" in ns and ns != CSIPAUS_NS:
            raise Sep2Error(resource, _shown(path),
                            f"CSIP-AUS namespace {ns} is not the one this gateway speaks ({CSIPAUS_NS}, "
                            f"CSIP-AUS {CSIPAUS_VERSION}); the message is refused whole rather than read "
                            "without the limits it carries", _VERSION_FIX)
    return received


def _bound(resource: str, received: dict[_Where, bool], bound: etree._Element) -> None:
    """Guard (b): every element that must bind comes back when the model is emitted."""
    emitted: dict[_Where, bool] = {}
    _walk(bound, ((bound.tag, 0),), False, emitted)
    for path, must_bind in received.items():
        if must_bind and path not in emitted:
            raise Sep2Error(resource, _shown(path),
                            f"element the gateway's 2030.5 / CSIP-AUS {CSIPAUS_VERSION} model did not "
                            "read (unknown, repeated or out of place), so acting on the message would "
                            "drop it; refused", _VERSION_FIX)


def _doctype(resource: str) -> Sep2Error:
    return Sep2Error(resource, "(document)", "has a DOCTYPE (a DTD or entity declarations)",
                     "2030.5 messages carry none; refused so that no entity is expanded and no file read")


def parse(model: type[M], xml: bytes) -> M:
    """`xml` as `model`, or Sep2Error: no DTD or entity is ever read, the size is capped, the root must be
    the model's element, and the guard above holds."""
    resource = model.__xml_tag__ or model.__name__
    if len(xml) > MAX_BYTES:
        raise Sep2Error(resource, "(document)", f"{len(xml)} bytes, over the {MAX_BYTES}-byte limit",
                        "a 2030.5 server pages its lists (?s=&l=); ask for a shorter page")
    if b"<!DOCTYPE" in xml:  # before libxml2 sees it; the docinfo check below catches other encodings
        raise _doctype(resource)
    try:
        root = etree.fromstring(xml, _PARSER)
    except etree.XMLSyntaxError as err:
        raise Sep2Error(resource, "(document)", f"not well-formed XML ({err})",
                        "the server must send application/sep+xml") from None
    if root.getroottree().docinfo.doctype:
        raise _doctype(resource)
    if root.tag != _tag(model):
        raise Sep2Error(resource, _local(root.tag) if isinstance(root.tag, str) else "(root)",
                        f"root element {root.tag} where {_tag(model)} was asked for",
                        "the link followed must point at this resource; check the href the server gave")
    received = _received(resource, root)
    try:
        obj = model.from_xml_tree(root)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = "/".join(str(p).rstrip("_") for p in first["loc"]) or "(root)"
        raise Sep2Error(resource, where, first.get("ctx", {}).get("orig", first["msg"]),
                        f"{err.error_count()} problem(s); the server must send a valid {resource} "
                        "(IEEE 2030.5 / CSIP-AUS XSD)") from None
    _bound(resource, received, obj.to_xml_tree(exclude_none=True))
    return obj


def emit(obj: BaseXmlModelWithNS) -> bytes:
    """The XML of `obj` for a PUT or POST (Content-Type CONTENT_TYPE); fields left None are omitted."""
    return obj.to_xml(exclude_none=True)  # type: ignore[return-value]  # bytes without an encoding


def watts(ap: ActivePower) -> float:
    """An ActivePower in W: value × 10^multiplier (envoy sends 1550 W as multiplier 2, value 15, i.e.
    1500 W: the server rounds, the client must not). A multiplier outside 2030.5's -9..9 is refused."""
    if ap.multiplier not in _MULTIPLIERS:
        raise Sep2Error("ActivePower", "multiplier", f"{ap.multiplier} is outside -9..9",
                        "the server must send a power-of-ten multiplier between -9 and 9")
    return ap.value * 10.0**ap.multiplier


def active_power(w: float, multiplier: int | None = None) -> ActivePower:
    """`w` as an ActivePower. With `multiplier` None, the smallest non-negative one whose value fits
    2030.5's Int16 (a 50 kW site is multiplier 1, value 5000); a given one that cannot hold `w` raises."""
    if w != w or w in (float("inf"), float("-inf")):
        raise ValueError(f"active_power: {w} W is not a power")
    chosen = multiplier if multiplier is not None else next(
        (m for m in range(10) if round(w / 10**m) in _INT16), 9)
    value = round(w / 10**chosen)
    if chosen not in _MULTIPLIERS or value not in _INT16:
        raise ValueError(f"active_power: {w} W does not fit value Int16 × 10^{chosen}; "
                         "use a larger multiplier or leave it to active_power")
    return ActivePower(multiplier=chosen, value=value)
