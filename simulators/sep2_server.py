"""A small CSIP-AUS 1.2 utility server (IEEE 2030.5) over real mutual TLS, for tests and the demo.

It plays the LDC head-end for the gateway's 2030.5 client the way the scenario player plays the LDC over
MQTT: the other, independent side. It is built on envoy-schema's models (the library the reference server,
bsgip envoy, is built on), imports nothing of `gateway/`, and serves envoy v1.5.0's URL shape and behaviour
as docs/reference records it: /dcap → /tm, /edev (in-band registration, `Location: /edev/1`), /edev/1 with
its Registration, csipaus ConnectionPoint, FunctionSetAssignments → DERPrograms → DefaultDERControl and the
DERControlList (paged with `s`/`l`, controls dropped once they have ended), the DERList and the DER's
capability/settings/status/availability (PUT → 204), MirrorUsagePoints (POST → 201 at /mup/2 and on, the
server's postRate replacing the client's) and their readings, and the Responses to controls.

Every body the client sends and every body served is checked against the 2030.5 and CSIP-AUS 1.2 XSDs
(simulators/sep2_xsd.py): a bad client body is answered 400 and recorded in `errors` (a test of the gateway
asserts there are none); a bad served body is a bug of this simulator, recorded there too and raised.

The control surface is plain Python for a test in the same event loop: programs, defaults and controls,
faults (500, 429 with Retry-After), poll and post rates, the PIN, a skewed clock; and the records of what
the client did, with `wait_for` to wait for an observable event instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import math
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

from aiohttp import web
from envoy_schema.server.schema.csip_aus.connection_point import (
    ConnectionPointLink,
    ConnectionPointRequest,
    ConnectionPointResponse,
)
from envoy_schema.server.schema.sep2 import der, end_device, metering_mirror, response
from envoy_schema.server.schema.sep2.base import BaseXmlModelWithNS, nsmap
from envoy_schema.server.schema.sep2.der_control_types import ActivePower
from envoy_schema.server.schema.sep2.device_capability import DeviceCapabilityResponse
from envoy_schema.server.schema.sep2.error import ErrorResponse
from envoy_schema.server.schema.sep2.event import EventStatus
from envoy_schema.server.schema.sep2.function_set_assignments import (
    FunctionSetAssignmentsListResponse,
    FunctionSetAssignmentsResponse,
)
from envoy_schema.server.schema.sep2.identification import Link, ListLink
from envoy_schema.server.schema.sep2.time import TimeResponse
from envoy_schema.server.schema.sep2.types import DateTimeIntervalType
from lxml import etree
from pydantic import ValidationError

from simulators import sep2_xsd
from simulators.sep2_certs import Pki, ServerTls, lfdi, load_pki, make_pki, sfdi

CONTENT_TYPE = "application/sep+xml"
# CSIP's suites for TLS 1.2 (the only version offered): CCM8 first, as 2030.5 mandates it.
CIPHERS = "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256"
SEP2, CSIPAUS = nsmap[""], nsmap["csipaus"]

# envoy's run-time defaults (seen on v1.5.0); the MirrorUsagePointList's is the 2030.5 default.
DEFAULT_POLL_RATES = {"dcap": 300, "edevl": 300, "fsal": 300, "derpl": 60, "derl": 60, "mupl": 900}
DEFAULT_POST_RATE = 60
CSIPAUS_12 = "https://csipaus.org/ns"
DEFAULT_PIN = 111115  # 2030.5's example PIN: 11111 and its check digit
FIRST_MUP_ID = 2  # envoy handed out /mup/2 to a fresh client: a client that assumes /mup/1 gets 404
DEFAULT_PAGE_LIMIT = 1  # 2030.5's default for `l`, as envoy applies it
DER_RESOURCES = ("dercap", "derg", "ders", "dera")
INT16 = range(-(2**15), 2**15)
REASON_HEADER = "X-Sep2-Sim-Reason"  # what a 4xx is about, in words, for whoever reads the client's log
LFDI_KEY = web.RequestKey("lfdi", str)

# The DERControlBase fields the control surface sets, by keyword: limits in W (encoded with `multiplier`)
# and booleans. opModFixedW (signed hundredths of a percent of setMaxW) and rampTms (hundredths of a second)
# carry no multiplier.
LIMITS = {"export_w": "opModExpLimW", "import_w": "opModImpLimW", "generation_w": "opModGenLimW",
          "load_w": "opModLoadLimW"}
FLAGS = {"connect": "opModConnect", "energize": "opModEnergize"}
PLAIN = {"fixed_w": "opModFixedW", "ramp_tms": "rampTms"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


# ---- what the simulator records ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    status: int
    lfdi: str  # of the client's certificate
    cipher: str  # the TLS suite negotiated
    mono: float
    wall: float


@dataclass(frozen=True)
class Posted:
    """A body the client sent and the server accepted: the envoy model, the bytes, where and when."""

    path: str
    lfdi: str
    body: Any
    xml: bytes
    mono: float
    wall: float
    mup: int | None = None  # for readings: the MirrorUsagePoint they were posted to


@dataclass(frozen=True)
class ControlResponse:
    """A Response the client posted to a DERControl's replyTo."""

    subject: str  # the control's mRID
    status: int  # 2030.5 ResponseType: 1 received, 2 started, 3 completed, 6 cancelled, 7 superseded, 252…
    lfdi: str  # endDeviceLFDI
    created: int | None  # createdDateTime
    mono: float
    wall: float


@dataclass(frozen=True)
class BodyError:
    """An XML body that failed: the client's (answered 400) or the simulator's own (a bug)."""

    side: Literal["client", "server"]
    method: str
    path: str
    message: str
    xml: bytes
    mono: float
    wall: float


# ---- the server's state -----------------------------------------------------------------------------------

@dataclass
class _Device:
    id: int
    lfdi: str
    sfdi: int
    changed_time: int
    registered_at: int


@dataclass
class _Default:
    mrid: str
    values: dict[str, Any]
    set_grad_w: int | None
    version: int = 0


@dataclass
class _Program:
    id: int
    primacy: int
    fsa: int
    mrid: str
    default: _Default | None = None


@dataclass
class _Control:
    id: int
    mrid: str
    program: int
    start: int
    duration: int
    values: dict[str, Any]
    randomize_start: int | None
    creation_time: int
    response_required: str
    version: int = 1
    cancelled_at: int | None = None

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass
class _Fault:
    status: int
    retry_after_s: float | None
    prefix: str
    remaining: int | None  # None: until clear_faults()


@dataclass
class _Mup:
    id: int
    lfdi: str
    body: metering_mirror.MirrorUsagePoint


def _mrid() -> str:
    return uuid.uuid4().hex.upper()


def _wall() -> tuple[float, float]:
    return time.monotonic(), time.time()


class SimulatorBug(RuntimeError):
    """The simulator was about to serve a body its own XSDs reject."""


class Sep2Server:
    """A CSIP-AUS 1.2 utility server on `host:port` (0: a free one), mutual TLS against the PKI's CA.

    DERProgram 1 (primacy 1, in FunctionSetAssignments 1) exists from the start, with no default and no
    control. Times given to the control surface are Unix seconds on the server's clock, `now()`.
    """

    def __init__(self, tls: Pki | ServerTls, host: str = "127.0.0.1", port: int = 0, *,
                 allow_registration: bool = True) -> None:
        self.tls = tls.server_tls if isinstance(tls, Pki) else tls
        self.host, self._port = host, port
        self.allow_registration = allow_registration  # in-band: a client may POST its EndDevice
        self.pin = DEFAULT_PIN
        self.clock_offset_s = 0.0  # the server's clock (and /tm) runs this far ahead of the real one
        self._multiplier = 0
        # the CSIP-AUS namespace served: another line's (e.g. https://csipaus.org/ns/v1.3, CSIP-AUS 1.3)
        # plays a server the client does not speak, whose limits a 1.2 model would silently drop
        self.csipaus_namespace = CSIPAUS_12
        self.poll_rates = dict(DEFAULT_POLL_RATES)
        self.post_rate = DEFAULT_POST_RATE
        self._devices: dict[str, _Device] = {}  # by LFDI
        self._programs: dict[int, _Program] = {}
        self._controls: dict[str, _Control] = {}  # by mRID
        self._known_mrids: set[str] = set()  # every control ever added: a Response's subject must be one
        self._next_control = 1
        self._mups: dict[int, _Mup] = {}
        self._next_mup = FIRST_MUP_ID
        self._faults: list[_Fault] = []
        self._connection_point: dict[str, str] = {}  # connectionPointId by LFDI
        self._der_current: dict[tuple[str, str], Posted] = {}  # (LFDI, dercap|derg|ders|dera) → the last PUT
        # records
        self.requests: list[Request] = []
        self.responses: list[ControlResponse] = []
        self.der_puts: dict[str, list[Posted]] = {name: [] for name in DER_RESOURCES}
        self.connection_points: list[Posted] = []
        self.mirror_usage_points: list[Posted] = []
        self.readings: list[Posted] = []
        self.errors: list[BodyError] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.add_program(primacy=1)

    # ---- lifecycle --------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self._port}"

    @property
    def dcap_url(self) -> str:
        return f"{self.url}/dcap"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, ssl_context=server_context(self.tls))
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Sep2Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- the control surface ----------------------------------------------------------------------------

    def now(self) -> int:
        """The server's clock (Unix seconds): what /tm serves and what decides a control's status."""
        return int(time.time() + self.clock_offset_s)

    def register(self, device_lfdi: str) -> int:
        """Register an EndDevice out of band (as envoy's admin or CACTUS's runner does); its /edev id."""
        key = device_lfdi.upper()
        if key not in self._devices:
            now = self.now()
            self._devices[key] = _Device(len(self._devices) + 1, key, sfdi(key), now, now)
        return self._devices[key].id

    def set_connection_point(self, device_lfdi: str, connection_point_id: str) -> None:
        """The EndDevice's connection point (NMI) set out of band, as envoy's admin `POST /site/{id}` does."""
        self._connection_point[device_lfdi.upper()] = connection_point_id

    def connection_point(self, device_lfdi: str) -> str | None:
        """The EndDevice's connection point id as the server holds it; None: never set."""
        return self._connection_point.get(device_lfdi.upper())

    def add_program(self, primacy: int, fsa: int = 1) -> int:
        """A DERProgram of that primacy (lower wins) in FunctionSetAssignments `fsa`; its id."""
        pid = len(self._programs) + 1
        self._programs[pid] = _Program(pid, primacy, fsa, _mrid())
        return pid

    def set_default(self, program: int, *, export_w: float | None = None, import_w: float | None = None,
                    generation_w: float | None = None, load_w: float | None = None,
                    connect: bool | None = None, energize: bool | None = None,
                    set_grad_w: int | None = None) -> str:
        """Set (or replace: same mRID, version + 1) the program's DefaultDERControl; its mRID.

        `set_grad_w` is in hundredths of a percent of setMaxW per second (27 = 0.27 %/s), as 2030.5 has it.
        """
        prog = self._program(program)
        values = self._values(export_w=export_w, import_w=import_w, generation_w=generation_w, load_w=load_w,
                              connect=connect, energize=energize)
        old = prog.default
        prog.default = (_Default(old.mrid, values, set_grad_w, old.version + 1) if old
                        else _Default(_mrid(), values, set_grad_w))
        return prog.default.mrid

    def clear_default(self, program: int) -> None:
        """The program has no DefaultDERControl any more (its link answers 404)."""
        self._program(program).default = None

    def add_control(self, program: int, start: float, duration: float, *, export_w: float | None = None,
                    import_w: float | None = None, generation_w: float | None = None,
                    load_w: float | None = None,
                    connect: bool | None = None, energize: bool | None = None, fixed_w: int | None = None,
                    ramp_tms: int | None = None, randomize_start: int | None = None,
                    creation_time: float | None = None, response_required: str = "03",
                    mrid: str | None = None) -> str:
        """A DERControl in `program` from `start` for `duration` s (server clock); its mRID (32 hex).

        Limits are W; `fixed_w` is opModFixedW (signed hundredths of a percent of setMaxW), `ramp_tms`
        hundredths of a second, `randomize_start` signed seconds. `creation_time` defaults to now.
        `mrid` (32 hex) defaults to a fresh one: a test gives one to know, before the client sees the
        control, what depends on it (the client's randomised start is drawn from its LFDI and the mRID).
        Every control carries replyTo /edev/<id>/rsps/site_control/rsp and this responseRequired.
        """
        self._program(program)
        if int(duration) <= 0:
            raise ValueError(f"a DERControl lasts a positive number of seconds, not duration={duration}")
        values = self._values(export_w=export_w, import_w=import_w, generation_w=generation_w, load_w=load_w,
                              connect=connect, energize=energize, fixed_w=fixed_w, ramp_tms=ramp_tms)
        if not values:
            raise ValueError("a DERControl must set at least one control (export_w, import_w, connect, …)")
        int(response_required, 16)  # a hex byte, or ValueError here rather than an invalid body later
        mrid = _mrid() if mrid is None else mrid.upper()
        if len(mrid) != 32 or mrid.strip("0123456789ABCDEF") or mrid in self._known_mrids:
            raise ValueError(f"a DERControl's mRID is 32 hex digits, unique on the server: {mrid!r}")
        self._controls[mrid] = _Control(
            self._next_control, mrid, program, int(start), int(duration), values, randomize_start,
            int(self.now() if creation_time is None else creation_time), response_required)
        self._next_control += 1
        self._known_mrids.add(mrid)
        return mrid

    def cancel(self, mrid: str) -> None:
        """EventStatus 2 (cancelled), version + 1: the control stays listed until its end, as 2030.5 wants."""
        control = self._control(mrid)
        control.cancelled_at, control.version = self.now(), control.version + 1

    def remove(self, mrid: str) -> None:
        """The control disappears from the server without being cancelled (not a cancellation, per 2030.5)."""
        del self._controls[self._control(mrid).mrid]

    @property
    def multiplier(self) -> int:
        """The power of ten limits are encoded with: value = W / 10**multiplier, truncated (as envoy does)."""
        return self._multiplier

    @multiplier.setter
    def multiplier(self, power: int) -> None:
        for holder in [*self._controls.values(), *(p.default for p in self._programs.values() if p.default)]:
            for key, w in holder.values.items():
                if key in LIMITS:
                    _encode(key, w, power)
        self._multiplier = power

    def set_poll_rate(self, resource: str, seconds: int) -> None:
        """The pollRate served on `resource`: dcap, edevl, fsal, derpl, derl or mupl."""
        if resource not in self.poll_rates:
            raise ValueError(f"no pollRate on {resource!r}: one of {', '.join(self.poll_rates)}")
        self.poll_rates[resource] = int(seconds)

    def set_post_rate(self, seconds: int) -> None:
        """The postRate every MirrorUsagePoint is served with, whatever the client posted."""
        self.post_rate = int(seconds)

    def fail(self, status: int = 500, *, prefix: str = "/", count: int | None = None) -> None:
        """Answer `status` to requests under `prefix` (the next `count` of them, or until clear_faults())."""
        self._faults.append(_Fault(status, None, prefix, count))

    def throttle(self, retry_after_s: float, *, prefix: str = "/", count: int | None = None) -> None:
        """Answer 429 with Retry-After (whole seconds, rounded up) to requests under `prefix` (the next
        `count`, or until clear_faults())."""
        self._faults.append(_Fault(429, retry_after_s, prefix, count))

    def clear_faults(self) -> None:
        self._faults.clear()

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:
        """Wait until `predicate()` is truthy, re-checked after every request; its value. TimeoutError names
        the last requests seen."""
        async with self._changed:
            try:
                return await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                last = ", ".join(f"{r.method} {r.path} {r.status}" for r in self.requests[-8:]) or "none"
                raise TimeoutError(f"2030.5 server: condition not met within {timeout} s; "
                                   f"last requests: {last}") from None

    def requested(self, method: str, path: str) -> list[Request]:
        """The requests (any status) of `method` on exactly `path`."""
        return [r for r in self.requests if r.method == method and r.path == path]

    # ---- helpers of the control surface -----------------------------------------------------------------

    def _program(self, pid: int) -> _Program:
        if pid not in self._programs:
            raise KeyError(f"no DERProgram {pid}: the programs are {sorted(self._programs)} "
                           "(add_program makes one)")
        return self._programs[pid]

    def _control(self, mrid: str) -> _Control:
        control = self._controls.get(mrid.upper())
        if control is None:
            raise KeyError(f"no DERControl with mRID {mrid} on the server")
        return control

    def _values(self, **given: Any) -> dict[str, Any]:
        values = {k: v for k, v in given.items() if v is not None}
        for key, w in values.items():
            if key in LIMITS:
                _encode(key, w, self._multiplier)  # refuse now what would be an invalid body later
        return values

    # ---- HTTP -------------------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        e = "/edev/{edev:\\d+}"
        p = e + "/derp/{program:\\d+}"
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/dcap", self._dcap), ("GET", "/tm", self._time),
            ("GET", "/edev", self._edev_list), ("POST", "/edev", self._edev_post),
            ("GET", e, self._edev),
            ("GET", e + "/rg", self._registration),
            ("GET", e + "/cp", self._cp_get), ("PUT", e + "/cp", self._cp_put),
            ("POST", e + "/cp", self._cp_put),
            ("GET", e + "/fsa", self._fsa_list), ("GET", e + "/fsa/{fsa:\\d+}", self._fsa),
            ("GET", e + "/fsa/{fsa:\\d+}/derp", self._program_list), ("GET", e + "/derp", self._program_list),
            ("GET", p, self._program_get),
            ("GET", p + "/derc", self._control_list), ("GET", p + "/actderc", self._control_list),
            ("GET", p + "/derc/{control:\\d+}", self._control_get),
            ("GET", p + "/dderc", self._default),
            ("GET", e + "/der", self._der_list), ("GET", e + "/der/{der:\\d+}", self._der),
            ("GET", e + "/der/{der:\\d+}/{res:dercap|derg|ders|dera}", self._der_get),
            ("PUT", e + "/der/{der:\\d+}/{res:dercap|derg|ders|dera}", self._der_put),
            ("GET", "/mup", self._mup_list), ("POST", "/mup", self._mup_post),
            ("GET", "/mup/{mup:\\d+}", self._mup_get), ("POST", "/mup/{mup:\\d+}", self._readings_post),
            ("GET", e + "/rsps/site_control/rsp", self._response_list),
            ("POST", e + "/rsps/site_control/rsp", self._response_post),
        ]
        for method, path, handler in table:
            app.router.add_route(method, path, handler)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        request[LFDI_KEY] = lfdi(ssl_object.getpeercert(binary_form=True)) if ssl_object else ""
        status = 500
        try:
            resp = self._fault(request) or await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:  # the router's 404 / 405
            status = e.status
            return web.Response(status=e.status, headers=e.headers)
        finally:
            cipher = ssl_object.cipher()[0] if ssl_object else ""
            self.requests.append(Request(request.method, request.path, request.query_string, status,
                                         request[LFDI_KEY], cipher, *_wall()))
            async with self._changed:
                self._changed.notify_all()

    def _fault(self, request: web.Request) -> web.Response | None:
        for fault in self._faults:
            if not request.path.startswith(fault.prefix) or fault.remaining == 0:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
            if fault.retry_after_s is None:
                return web.Response(status=fault.status)
            wait = math.ceil(fault.retry_after_s)
            # reasonCode 4: maximum request frequency exceeded
            return self._xml(ErrorResponse(reasonCode=4, maxRetryDuration=wait), status=429,
                             headers={"Retry-After": str(wait), REASON_HEADER: "throttled by the test"})
        return None

    def _xml(self, model: BaseXmlModelWithNS, status: int = 200, headers: dict[str, str] | None = None,
             ) -> web.Response:
        body = model.to_xml(exclude_none=True)
        assert isinstance(body, bytes)
        try:
            sep2_xsd.validate(body)
        except sep2_xsd.XsdError as e:
            self.errors.append(BodyError("server", "", type(model).__name__, str(e), body, *_wall()))
            raise SimulatorBug(f"the simulator served an XSD-invalid {type(model).__name__}: {e}") from e
        body = body.replace(CSIPAUS_12.encode(), self.csipaus_namespace.encode())
        return web.Response(body=body, status=status, headers=headers, content_type=CONTENT_TYPE)

    def _error(self, status: int, message: str, reason: int = 1) -> web.Response:
        """An Error body (reasonCode 0: invalid format, 1: invalid values); what is wrong goes in a header,
        because 2030.5's Error has no text (envoy's `message` extension is not in the XSD)."""
        return self._xml(ErrorResponse(reasonCode=reason), status=status,
                         headers={REASON_HEADER: _header_text(message)})

    def _created(self, location: str) -> web.Response:
        return web.Response(status=201, headers={"Location": location})

    async def _body(self, request: web.Request, models: dict[tuple[str, str], type[BaseXmlModelWithNS]],
                    ) -> BaseXmlModelWithNS | web.Response:
        """The client's body as the model its root element (namespace, name) selects among `models`, or the
        400 that answers it (recorded in `errors`)."""
        xml = await request.read()
        try:
            sep2_xsd.validate(xml)
            tag = etree.QName(etree.fromstring(xml, sep2_xsd.PARSER))
            model = models.get((tag.namespace or "", tag.localname))
            if model is None:
                wanted = " or ".join(name for _, name in models)
                raise sep2_xsd.XsdError(1, f"{request.method} {request.path} takes a {wanted}, "
                                           f"not a {tag.localname}")
            return model.from_xml(xml)
        except (sep2_xsd.XsdError, ValidationError) as e:
            message = str(e)
            self.errors.append(BodyError("client", request.method, request.path, message, xml, *_wall()))
            return self._error(400, message, reason=0)

    def _device(self, request: web.Request) -> _Device | None:
        """The caller's EndDevice if the path's /edev/<id> is its own (others' are not found, as in envoy)."""
        device = self._devices.get(request[LFDI_KEY])
        if device is None or ("edev" in request.match_info and int(request.match_info["edev"]) != device.id):
            return None
        return device

    def _page(self, request: web.Request, items: list[T]) -> tuple[list[T], int] | web.Response:
        """The page `s` (start, default 0) / `l` (limit, default 1) asks for, with the count of all items."""
        try:
            start = int(request.query.get("s", "0"))
            limit = int(request.query.get("l", str(DEFAULT_PAGE_LIMIT)))
            if start < 0 or limit < 0:
                raise ValueError
        except ValueError:
            return self._error(400, f"paging takes s and l as whole numbers >= 0: {request.query_string!r}")
        return items[start:start + limit], len(items)

    # ---- resources --------------------------------------------------------------------------------------

    async def _dcap(self, request: web.Request) -> web.Response:
        device = self._device(request)
        mups = [m for m in self._mups.values() if m.lfdi == request[LFDI_KEY]]
        return self._xml(DeviceCapabilityResponse(
            href="/dcap", pollRate=self.poll_rates["dcap"], TimeLink=Link(href="/tm"),
            EndDeviceListLink=ListLink(href="/edev", all_=1 if device else 0),
            MirrorUsagePointListLink=ListLink(href="/mup", all_=len(mups))))

    async def _time(self, request: web.Request) -> web.Response:
        now = self.now()
        year = time.gmtime(now).tm_year
        # UTC: no daylight saving, so dstOffset 0 over a DST "period" of this whole year.
        return self._xml(TimeResponse(
            href="/tm", currentTime=now, dstEndTime=calendar.timegm((year + 1, 1, 1, 0, 0, 0)), dstOffset=0,
            dstStartTime=calendar.timegm((year, 1, 1, 0, 0, 0)), quality=4, tzOffset=0))

    def _end_device(self, device: _Device) -> end_device.EndDeviceResponse:
        e = f"/edev/{device.id}"
        return end_device.EndDeviceResponse(
            href=e, lFDI=device.lfdi, sFDI=device.sfdi, changedTime=device.changed_time, enabled=True,
            DERListLink=ListLink(href=f"{e}/der", all_=1),
            FunctionSetAssignmentsListLink=ListLink(href=f"{e}/fsa", all_=len(self._fsa_ids())),
            RegistrationLink=Link(href=f"{e}/rg"), ConnectionPointLink=ConnectionPointLink(href=f"{e}/cp"))

    async def _edev_list(self, request: web.Request) -> web.Response:
        device = self._device(request)
        page = self._page(request, [device] if device else [])
        if isinstance(page, web.Response):
            return page
        items, total = page
        return self._xml(end_device.EndDeviceListResponse(
            href="/edev", pollRate=self.poll_rates["edevl"], all_=total, results=len(items),
            EndDevice=[self._end_device(d) for d in items] or None))

    async def _edev_post(self, request: web.Request) -> web.Response:
        body = await self._body(request, {(SEP2, "EndDevice"): end_device.EndDeviceRequest})
        if isinstance(body, web.Response):
            return body
        assert isinstance(body, end_device.EndDeviceRequest)
        own = request[LFDI_KEY]
        if (body.lFDI is not None and body.lFDI.upper() != own) or body.sFDI != sfdi(own):
            message = (f"EndDevice lFDI {body.lFDI} / sFDI {body.sFDI} are not those of the client "
                       f"certificate (lFDI {own}, sFDI {sfdi(own)})")
            self.errors.append(BodyError("client", "POST", "/edev", message, await request.read(), *_wall()))
            return self._error(403, message)
        if own not in self._devices and not self.allow_registration:
            return self._error(403, "in-band registration is disabled on this server: register out of band")
        device_id = self.register(own)
        self._devices[own].changed_time = body.changedTime
        return self._created(f"/edev/{device_id}")

    async def _edev(self, request: web.Request) -> web.Response:
        device = self._device(request)
        return self._xml(self._end_device(device)) if device else web.Response(status=404)

    async def _registration(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return web.Response(status=404)
        return self._xml(end_device.RegistrationResponse(
            href=f"/edev/{device.id}/rg", dateTimeRegistered=device.registered_at, pIN=self.pin))

    async def _cp_get(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return web.Response(status=404)
        # none yet: an empty connectionPointId, as envoy serves a site without an NMI
        cp_id = self._connection_point.get(device.lfdi, "")
        return self._xml(ConnectionPointResponse(href=f"/edev/{device.id}/cp", id=cp_id))

    async def _cp_put(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return web.Response(status=404)
        body = await self._body(request, {(CSIPAUS, "ConnectionPoint"): ConnectionPointRequest})
        if isinstance(body, web.Response):
            return body
        assert isinstance(body, ConnectionPointRequest)
        posted = await self._posted(request, body)
        self._connection_point[device.lfdi] = body.id or ""
        self.connection_points.append(posted)
        return self._created(request.path)  # envoy answers a PUT and a POST 201 with its Location

    def _fsa_ids(self) -> list[int]:
        return sorted({p.fsa for p in self._programs.values()})

    def _fsa_model(self, device: _Device, fsa: int) -> FunctionSetAssignmentsResponse:
        e = f"/edev/{device.id}"
        count = sum(1 for p in self._programs.values() if p.fsa == fsa)
        return FunctionSetAssignmentsResponse(
            href=f"{e}/fsa/{fsa}", mRID=f"{fsa:032X}", description=f"FSA {fsa}", version=0,
            DERProgramListLink=ListLink(href=f"{e}/fsa/{fsa}/derp", all_=count))

    async def _fsa_list(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return web.Response(status=404)
        page = self._page(request, self._fsa_ids())
        if isinstance(page, web.Response):
            return page
        items, total = page
        return self._xml(FunctionSetAssignmentsListResponse(
            href=f"/edev/{device.id}/fsa", pollRate=self.poll_rates["fsal"], all_=total, results=len(items),
            FunctionSetAssignments=[self._fsa_model(device, f) for f in items] or None))

    async def _fsa(self, request: web.Request) -> web.Response:
        device, fsa = self._device(request), int(request.match_info["fsa"])
        if device is None or fsa not in self._fsa_ids():
            return web.Response(status=404)
        return self._xml(self._fsa_model(device, fsa))

    def _program_model(self, device: _Device, prog: _Program) -> der.DERProgramResponse:
        p = f"/edev/{device.id}/derp/{prog.id}"
        now = self.now()
        active, listed = len(self._listed(prog.id, now, True)), len(self._listed(prog.id, now, False))
        return der.DERProgramResponse(
            href=p, mRID=prog.mrid, description=f"program {prog.id}", version=0, primacy=prog.primacy,
            ActiveDERControlListLink=ListLink(href=f"{p}/actderc", all_=active),
            DefaultDERControlLink=Link(href=f"{p}/dderc"),
            DERControlListLink=ListLink(href=f"{p}/derc", all_=listed))

    async def _program_list(self, request: web.Request) -> web.Response:
        device = self._device(request)
        fsa = int(request.match_info["fsa"]) if "fsa" in request.match_info else None
        if device is None or (fsa is not None and fsa not in self._fsa_ids()):
            return web.Response(status=404)
        programs = sorted((p for p in self._programs.values() if fsa is None or p.fsa == fsa),
                          key=lambda p: (p.primacy, p.id))
        page = self._page(request, programs)
        if isinstance(page, web.Response):
            return page
        items, total = page
        return self._xml(der.DERProgramListResponse(
            href=request.path, pollRate=self.poll_rates["derpl"], all_=total, results=len(items),
            DERProgram=[self._program_model(device, p) for p in items] or None))

    async def _program_get(self, request: web.Request) -> web.Response:
        device, prog = self._device(request), self._programs.get(int(request.match_info["program"]))
        if device is None or prog is None:
            return web.Response(status=404)
        return self._xml(self._program_model(device, prog))

    def _listed(self, program: int, now: int, active_only: bool) -> list[_Control]:
        """The program's controls that have not ended, in 2030.5's order for events: start, then newest
        creation, then mRID (descending); only those in force now for the ActiveDERControlList."""
        controls = [c for c in self._controls.values() if c.program == program and c.end > now
                    and (not active_only or (c.start <= now and c.cancelled_at is None))]
        controls.sort(key=lambda c: c.mrid, reverse=True)
        controls.sort(key=lambda c: c.creation_time, reverse=True)
        controls.sort(key=lambda c: c.start)
        return controls

    def _base(self, values: dict[str, Any]) -> der.DERControlBase:
        fields: dict[str, Any] = {}
        for key, v in values.items():
            if key in LIMITS:
                fields[LIMITS[key]] = ActivePower(multiplier=self._multiplier,
                                                  value=_encode(key, v, self._multiplier))
            else:
                fields[(FLAGS | PLAIN)[key]] = v
        return der.DERControlBase(**fields)

    def _control_model(self, device: _Device, c: _Control, now: int) -> der.DERControlResponse:
        if c.cancelled_at is not None:
            status, since = 2, c.cancelled_at
        elif c.start <= now:
            status, since = 1, c.start
        else:
            status, since = 0, c.creation_time
        return der.DERControlResponse(
            href=f"/edev/{device.id}/derp/{c.program}/derc/{c.id}",
            replyTo=f"/edev/{device.id}/rsps/site_control/rsp", responseRequired=c.response_required,
            mRID=c.mrid, description=f"control {c.id}", version=c.version, creationTime=c.creation_time,
            EventStatus_=EventStatus(currentStatus=status, dateTime=since, potentiallySuperseded=False),
            interval=DateTimeIntervalType(start=c.start, duration=c.duration),
            randomizeStart=c.randomize_start, DERControlBase_=self._base(c.values))

    async def _control_list(self, request: web.Request) -> web.Response:
        device, prog = self._device(request), self._programs.get(int(request.match_info["program"]))
        if device is None or prog is None:
            return web.Response(status=404)
        now = self.now()
        page = self._page(request, self._listed(prog.id, now, request.path.endswith("/actderc")))
        if isinstance(page, web.Response):
            return page
        items, total = page
        return self._xml(der.DERControlListResponse(
            href=request.path, all_=total, results=len(items),
            DERControl=[self._control_model(device, c, now) for c in items] or None))

    async def _control_get(self, request: web.Request) -> web.Response:
        device = self._device(request)
        pid, cid = int(request.match_info["program"]), int(request.match_info["control"])
        found = [c for c in self._controls.values() if c.program == pid and c.id == cid]
        if device is None or not found:
            return web.Response(status=404)
        return self._xml(self._control_model(device, found[0], self.now()))

    async def _default(self, request: web.Request) -> web.Response:
        device, prog = self._device(request), self._programs.get(int(request.match_info["program"]))
        if device is None or prog is None or prog.default is None:
            return web.Response(status=404)
        d = prog.default
        return self._xml(der.DefaultDERControl(
            href=request.path, mRID=d.mrid, description=f"default of program {prog.id}", version=d.version,
            DERControlBase_=self._base(d.values), setGradW=d.set_grad_w))

    async def _der_list(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return web.Response(status=404)
        page = self._page(request, [1])
        if isinstance(page, web.Response):
            return page
        items, total = page
        return self._xml(der.DERListResponse(
            href=request.path, pollRate=self.poll_rates["derl"], all_=total, results=len(items),
            DER_=[self._der_model(device) for _ in items] or None))

    @staticmethod
    def _der_model(device: _Device) -> der.DER:
        d = f"/edev/{device.id}/der/1"
        return der.DER(href=d, DERCapabilityLink=Link(href=f"{d}/dercap"),
                       DERSettingsLink=Link(href=f"{d}/derg"), DERStatusLink=Link(href=f"{d}/ders"),
                       DERAvailabilityLink=Link(href=f"{d}/dera"))

    async def _der(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None or request.match_info["der"] != "1":
            return web.Response(status=404)
        return self._xml(self._der_model(device))

    async def _der_get(self, request: web.Request) -> web.Response:
        device = self._device(request)
        posted = self._der_current.get((device.lfdi, request.match_info["res"])) if device else None
        if posted is None or request.match_info["der"] != "1":
            return web.Response(status=404)
        return web.Response(body=posted.xml, content_type=CONTENT_TYPE)

    async def _der_put(self, request: web.Request) -> web.Response:
        device, res = self._device(request), request.match_info["res"]
        if device is None or request.match_info["der"] != "1":
            return web.Response(status=404)
        model, root = DER_MODELS[res]
        body = await self._body(request, {(SEP2, root): model})
        if isinstance(body, web.Response):
            return body
        posted = await self._posted(request, body)
        self._der_current[(device.lfdi, res)] = posted
        self.der_puts[res].append(posted)
        return web.Response(status=204)

    def _mup_model(self, mup: _Mup) -> metering_mirror.MirrorUsagePoint:
        # The server's postRate replaces whatever the client asked for (envoy: 300 → 60).
        return metering_mirror.MirrorUsagePoint(**{**dict(mup.body), "href": f"/mup/{mup.id}",
                                                   "postRate": self.post_rate})

    async def _mup_list(self, request: web.Request) -> web.Response:
        page = self._page(request, [m for m in self._mups.values() if m.lfdi == request[LFDI_KEY]])
        if isinstance(page, web.Response):
            return page
        items, total = page
        return self._xml(metering_mirror.MirrorUsagePointListResponse(
            href="/mup", pollRate=self.poll_rates["mupl"], all_=total, results=len(items),
            mirrorUsagePoints=[self._mup_model(m) for m in items]))

    async def _mup_post(self, request: web.Request) -> web.Response:
        models = {(SEP2, "MirrorUsagePoint"): metering_mirror.MirrorUsagePointRequest}
        body = await self._body(request, models)
        if isinstance(body, web.Response):
            return body
        assert isinstance(body, metering_mirror.MirrorUsagePointRequest)
        self.mirror_usage_points.append(await self._posted(request, body))
        # The same mRID from the same client updates its MirrorUsagePoint (envoy upserts): same Location.
        same = [m for m in self._mups.values() if m.lfdi == request[LFDI_KEY] and m.body.mRID.upper()
                == body.mRID.upper()]
        if same:
            same[0].body = body
            return self._created(f"/mup/{same[0].id}")
        mup = _Mup(self._next_mup, request[LFDI_KEY], body)
        self._mups[mup.id] = mup
        self._next_mup += 1
        return self._created(f"/mup/{mup.id}")

    def _own_mup(self, request: web.Request) -> _Mup | None:
        mup = self._mups.get(int(request.match_info["mup"]))
        return mup if mup is not None and mup.lfdi == request[LFDI_KEY] else None

    async def _mup_get(self, request: web.Request) -> web.Response:
        mup = self._own_mup(request)
        return self._xml(self._mup_model(mup)) if mup else web.Response(status=404)

    async def _readings_post(self, request: web.Request) -> web.Response:
        mup = self._own_mup(request)
        if mup is None:
            return web.Response(status=404)
        body = await self._body(request, {
            (SEP2, "MirrorMeterReading"): metering_mirror.MirrorMeterReadingRequest,
            (SEP2, "MirrorMeterReadingList"): metering_mirror.MirrorMeterReadingListRequest})
        if isinstance(body, web.Response):
            return body
        self.readings.append(await self._posted(request, body, mup=mup.id))
        return self._created(f"/mup/{mup.id}")

    async def _response_list(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return web.Response(status=404)
        mine = [r for r in self.responses if r.lfdi == device.lfdi]
        page = self._page(request, mine)
        if isinstance(page, web.Response):
            return page
        items, total = page
        return self._xml(response.ResponseListResponse(
            href=request.path, all_=total, results=len(items),
            Response_=[response.Response(createdDateTime=r.created, endDeviceLFDI=r.lfdi, status=r.status,
                                         subject=r.subject) for r in items] or None))

    async def _response_post(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return web.Response(status=404)
        body = await self._body(request, {(SEP2, "DERControlResponse"): response.DERControlResponse})
        if isinstance(body, web.Response):
            return body
        assert isinstance(body, response.DERControlResponse)
        problems = []
        if body.endDeviceLFDI.upper() != device.lfdi:
            problems.append(f"endDeviceLFDI {body.endDeviceLFDI} is not the client's LFDI {device.lfdi}")
        if body.subject.upper() not in self._known_mrids:
            problems.append(f"subject {body.subject} is the mRID of no DERControl this server sent")
        if body.status is None:
            problems.append("a Response to a DERControl needs a status")
        if problems:
            message = "; ".join(problems)
            self.errors.append(BodyError("client", "POST", request.path, message, await request.read(),
                                         *_wall()))
            return self._error(400, message)
        self.responses.append(ControlResponse(body.subject.upper(), int(body.status), device.lfdi,
                                              body.createdDateTime, *_wall()))
        return self._created(f"{request.path}/{len(self.responses)}")

    async def _posted(self, request: web.Request, body: BaseXmlModelWithNS, mup: int | None = None) -> Posted:
        return Posted(request.path, request[LFDI_KEY], body, await request.read(), *_wall(), mup=mup)


DER_MODELS: dict[str, tuple[type[BaseXmlModelWithNS], str]] = {
    "dercap": (der.DERCapability, "DERCapability"), "derg": (der.DERSettings, "DERSettings"),
    "ders": (der.DERStatus, "DERStatus"), "dera": (der.DERAvailability, "DERAvailability")}


def _encode(key: str, watts: float, power: int) -> int:
    """W as an ActivePower value at 10**power, truncated toward zero like envoy's site_control_pow10_encoding;
    the value must fit the schema's Int16."""
    value = int(Decimal(str(watts)).scaleb(-power))
    if value not in INT16:
        enough = next(p for p in range(power, power + 20) if int(Decimal(str(watts)).scaleb(-p)) in INT16)
        raise ValueError(f"{key}={watts} W is {value} at multiplier {power}, outside ActivePower's Int16: "
                         f"set the server's multiplier to {enough} or more")
    return value


def _header_text(message: str) -> str:
    """A message as an HTTP header value: one line of ASCII, bounded."""
    return " ".join(message.split()).encode("ascii", "replace").decode()[:500]


def server_context(tls: ServerTls) -> ssl.SSLContext:
    """TLS 1.2 only, the CSIP suites, and a client certificate required that chains to the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(tls.cert, tls.key)
    ctx.load_verify_locations(cafile=tls.ca_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _serve(directory: Path, host: str, port: int) -> None:
    pki = load_pki(directory) if (directory / "ca.crt").exists() else make_pki(directory)
    async with Sep2Server(pki, host, port) as server:
        print(f"2030.5 server on {server.dcap_url} (TLS 1.2, {CIPHERS})")
        print(f"  CA {pki.ca_cert}; a client may use {pki.client_cert} / {pki.client_key} "
              f"(LFDI {pki.client_lfdi}, SFDI {pki.client_sfdi})")
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """`python -m simulators.sep2_server --dir DIR --port N`: serve until interrupted (for manual use)."""
    parser = argparse.ArgumentParser(prog="python -m simulators.sep2_server", description=main.__doc__)
    parser.add_argument("--dir", type=Path, required=True,
                        help="the test PKI's directory (written there first if it holds no ca.crt)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.dir, args.host, args.port))


if __name__ == "__main__":
    main()


def sep2_actions(server: Sep2Server) -> dict[str, Callable[[], Any]]:
    """The 2030.5 actions a scenario can name (examples/demo_scenario.toml): the LDC's utility server
    issues an export limit of 120 kW for 20 s, and sets its DefaultDERControl to 160 kW export."""
    return {
        "sep2_export_limit": lambda: server.add_control(1, server.now() - 1, 20, export_w=120_000),
        "sep2_default": lambda: server.set_default(1, export_w=160_000),
    }
