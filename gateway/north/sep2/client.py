"""The IEEE 2030.5 client: the LDC's utility server as a north interface (north/port.py).

Two tasks. `_exchange` talks to the server, one request at a time: discovery (DeviceCapability → Time →
EndDeviceList → its EndDevice, POSTed if absent → Registration, its PIN checked → the CSIP-AUS
ConnectionPoint, PUT when the server's is not `[sep2] connection_point_id` → DERList → the
MirrorUsagePoints), then, each at its own rate, the programs (EndDevice → FunctionSetAssignmentsList →
DERProgramList → each program's DefaultDERControl and paged DERControlList, the hrefs followed afresh each
time), the Responses due, DERStatus, the MirrorUsagePointList (the server may change its postRate), and
the readings at UTC-aligned postRate ticks of the server's clock. It backs off on a failure and waits
out a 429's Retry-After. `_follow` runs every second whatever the server does: the controls received
so far are planned (schedule.py) and the core is given exactly the LDC envelopes and overrides that plan
says (instructions.py), through the one path of every instruction (Port.submit). So the received
schedule keeps being followed through a server outage, and a limit that arrives both by 2030.5 and by
another interface is applied once, the most restrictive winning (the core's rule).

The Responses queued (which statuses each control has had) and those not yet posted are kept in the
gateway's store (Port.save_state) before any is posted, and after each is: a restarted gateway, stopped
or killed, posts none again that the server has, and loses none it had queued (one posted in the
moment between its POST and the store's write would be posted twice rather than lost). The controls
received are kept with them: one the server stops listing before its end is still followed to its end.

Times: the server's clock (its /tm) may differ from the box's; event times are taken on the server's
clock (shifted by the measured offset) and a skew beyond `[sep2] max_clock_skew_s` is an alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, replace
from typing import Any

from gateway.config import site_params
from gateway.core.model import Inbound
from gateway.core.outbound import Constraint, Response
from gateway.journal import Encoded
from gateway.north.port import CycleView, Port
from gateway.north.sep2 import codec, identity, instructions, schedule
from gateway.north.sep2.controls import control, default_control
from gateway.north.sep2.model import Control, DefaultControl
from gateway.north.sep2.reports import Readings, Reporter
from gateway.north.sep2.transport import Refused, Server, ServerError, Throttled
from gateway.south.backoff import Backoff

log = logging.getLogger(__name__)
SOURCE = "sep2"  # how the audit log and the authority check name this interface
FOLLOW_S = 1.0  # how often the received schedule is planned and handed to the core
DEFAULT_POLL_S = 900  # 2030.5's default pollRate
HORIZON_S = 86400  # how far ahead a default control is handed to the core (refreshed every hour)
FORGET_S = 3600  # a control this long past its end is forgotten
STATE_KEY = "sep2"  # the client's entry in the gateway's store (Port.save_state)


class PinMismatch(Exception):
    pass


@dataclass
class Tree:
    """What discovery found: the hrefs the polls start from (followed afresh on every walk)."""

    edev: str
    der_list: str | None
    mup_list: str | None


class Sep2Client:
    def __init__(self, port: Port) -> None:
        self.port = port
        self.params = site_params(port.site)
        cfg = self.cfg = port.site.sep2
        assert cfg.ca is not None and cfg.cert is not None and cfg.key is not None  # the site file checks
        der = identity.certificate_der(cfg.cert)
        self.lfdi, self.sfdi = identity.lfdi(der), identity.sfdi(der)
        self._ssl = identity.client_context(cfg.ca, cfg.cert, cfg.key)  # a bad file stops the start here
        self.controls: dict[str, Control] = {}  # by mRID, as received (kept when it leaves the list)
        self.defaults: dict[str, DefaultControl] = {}  # by program mRID
        self.responses = schedule.Responses()
        self._outbox: deque[schedule.Due] = deque()  # the Responses to post, in order
        self._restore(port.load_state(STATE_KEY))
        self._unsaved = False  # the Responses changed since they were last handed to the store
        self._saving: asyncio.Future[None] | None = None  # the last write of them
        self._save_failed = False
        self.offset_s = 0  # the server's clock − the box's (from /tm), whole seconds
        self.received = asyncio.Event()  # the programs were read once: the plan may be handed to the core
        self._replan = asyncio.Event()  # the programs were read again: plan now, not on the next tick
        self.reporter = Reporter(port.site, self.lfdi)
        self.readings = Readings()
        self._tree: Tree | None = None
        self._due: dict[str, float] = {}  # loop time each poll is due: walk, programs, status
        self._readings_at: float | None = None  # the next UTC-aligned reading, on the server's clock
        self._readings_from: int | None = None  # the end of the interval just posted, on the server's clock
        self._wake = asyncio.Event()
        self._alarms: dict[str, str] = {}
        self._backoff = Backoff(initial_s=1.0, max_s=cfg.backoff_max_s)

    # ---- the NorthInterface ------------------------------------------------------------------------
    def services(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        return {"sep2": self.run}

    def on_outbound(self, encoded: list[Encoded]) -> None:
        pass  # the outcomes that concern the server come with the cycle (on_cycle)

    def alarms(self) -> tuple[str, ...]:
        return tuple(self._alarms.values())

    def on_cycle(self, view: CycleView) -> None:
        self.readings.add(view)
        for out in view.cycle.outbound:
            # a limit of a control the site cannot deliver: the control is answered "cannot be met"
            if isinstance(out, Constraint) and (mrid := instructions.control_of(out.ref)) is not None:
                self._queue(self.responses.cannot_be_met(
                    mrid, f"{out.reason}: {out.deliverable_kw:.1f} kW deliverable"))

    async def run(self) -> None:
        server = Server(self.cfg.server, self._ssl, self.cfg.request_timeout_s, self._heard)
        async with server, asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow())
            tasks.create_task(self._exchange(server))

    def _heard(self) -> None:
        self.port.heard("ldc")

    def _alarm(self, key: str, text: str | None) -> None:
        if text is None:
            self._alarms.pop(key, None)
        else:
            self._alarms[key] = text

    # ---- following the schedule ----------------------------------------------------------------------
    def _on_box_clock(self) -> list[Control]:
        return [replace(c, start=c.start - self.offset_s) for c in self.controls.values()]

    def _held(self) -> dict[str, Inbound]:
        """What the core holds from 2030.5, by key (instructions.after's shape): after a restart, the
        instructions the core restored, so that nothing is submitted twice."""
        held: dict[str, Inbound] = {}
        for msg_id, msg in self.port.live("ldc").items():
            if msg_id.startswith(instructions.PREFIX):
                key = instructions.key_of(msg_id)
                held[msg_id if key in held else key] = msg
        return held

    async def _follow(self) -> None:
        submitted = self._held()
        await self.received.wait()  # until then the core's restored sep2 instructions stand as they are
        while True:
            now = int(time.time())
            controls = self._on_box_clock()
            plan = schedule.plan(controls, list(self.defaults.values()), self.lfdi)
            want = instructions.desired(plan, self.params, now, HORIZON_S, ramp_w_per_s=self._ramp_w_per_s())
            for _ in range(3):  # the adds, then the cancels (see instructions.changes)
                msgs = instructions.changes(want, submitted, now)
                if not msgs:
                    break
                refused = [msg.id for msg in msgs if not await self._submitted(msg)]
                submitted = instructions.after(submitted, msgs, now, refused)
            self._queue(self.responses.due(controls, plan, now))
            await self._save()  # whether or not the server is there to take them
            self._forget(now)
            self._replan.clear()
            with contextlib.suppress(TimeoutError):  # a second, or at once when the programs were read
                async with asyncio.timeout(FOLLOW_S):
                    await self._replan.wait()

    async def _submitted(self, msg: Inbound) -> bool:
        outs = await self.port.submit(msg, source=SOURCE)
        for out in outs:
            if isinstance(out, Response) and out.status == "rejected":
                log.warning("2030.5: the core refused %s: %s %s", msg.id, out.reason, out.detail or "")
                return False
        return True

    def _queue(self, due: list[schedule.Due]) -> None:
        if due:
            self._outbox.extend(due)
            self._unsaved = True
            self._wake.set()

    # ---- the Responses across a restart ------------------------------------------------------------------
    def _restore(self, saved: Any) -> None:
        if saved is None:
            return
        try:
            self.responses.restore(saved["responses"])
            self._outbox.extend(schedule.Due(**due) for due in saved["outbox"])
            # the controls received: one the server stopped listing before its end, without cancelling it,
            # is still followed to its end by a restarted gateway (an older entry has none)
            for c in saved.get("controls", []):
                self.controls[c["mrid"]] = Control(**{**c, "unsupported": tuple(c["unsupported"])})
        except (KeyError, TypeError, ValueError) as err:
            log.warning("2030.5: the Responses kept in the store are not usable (%s: %s); starting afresh: "
                        "the controls listed are answered 'received' again", type(err).__name__, err)
            self.responses, self._outbox, self.controls = schedule.Responses(), deque(), {}

    async def _save(self) -> None:
        """Until the Responses as they stand are in the store (written only if they changed since the
        last save; the store writes in order, so awaiting the last write awaits every one before)."""
        if self._unsaved:
            self._unsaved = False  # a change while the store writes is saved by the next call
            state = {"responses": self.responses.snapshot(), "outbox": [asdict(due) for due in self._outbox],
                     "controls": [asdict(c) for c in self.controls.values()]}
            self._saving = asyncio.ensure_future(self._write(state))
        if self._saving is not None:
            await asyncio.shield(self._saving)

    async def _write(self, state: dict[str, Any]) -> None:
        try:
            stored = await self.port.save_state(STATE_KEY, state)
        except Exception:  # a bug in the store's code: logged, and tried again like a store that fails
            log.exception("2030.5: writing the Responses to the store failed")
            stored = False
        if not stored:
            self._unsaved = True  # tried again by the next save
        if stored == self._save_failed:  # a change: said once, not at every try
            self._save_failed = not stored
            if stored:
                log.info("2030.5: the store takes the Responses again")
            else:
                log.warning("2030.5: the store did not take the Responses; a restart now would post again "
                            "those posted since the last save, or lose those queued since")

    def _forget(self, now: int) -> None:
        for mrid in [m for m, c in self.controls.items() if c.end - self.offset_s + FORGET_S < now]:
            del self.controls[mrid]
            self._unsaved = True

    # ---- the server ----------------------------------------------------------------------------------
    async def _exchange(self, server: Server) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay: float | None = None
            try:
                await self._exchange_due(server, loop.time())
                self._backoff.succeeded()
                self._alarm("server", None)
            except PinMismatch as err:
                log.error("2030.5: %s", err)
                self._alarm("server", None)
                self._alarm("pin", f"2030.5: {err}")
                await asyncio.Event().wait()  # stopped: nothing more is asked of or taken from this server
            except Throttled as err:
                delay = err.retry_after_s
                if delay is None:
                    delay = self._backoff.failed(loop.time())
                log.warning("2030.5: %s: waiting %.0f s", err, delay)
                self._alarm("server", f"2030.5 server throttles the site ({err}); following the schedule "
                                      "received")
            except (ServerError, codec.Sep2Error) as err:
                delay = self._backoff.failed(loop.time())
                log.warning("2030.5: %s: retrying in %.0f s", err, delay)
                self._alarm("server", f"2030.5 server: {err}; following the schedule received")
            if delay is not None:
                await asyncio.sleep(delay)
                continue
            # until the next poll is due, or at once when a Response is due (at most a second: readings)
            self._wake.clear()
            wait = min(self._due.values(), default=loop.time()) - loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(wait, 1.0))):
                    await self._wake.wait()

    async def _exchange_due(self, server: Server, now: float) -> None:
        if self._tree is None or now >= self._due["walk"]:
            await self._walk(server, now)
        if now >= self._due["programs"]:
            await self._poll_programs(server, now)
        await self._send_responses(server)
        if now >= self._due["status"]:
            await self._report_der(server, now)
        if self._tree.mup_list and self.reporter.mups and now >= self._due.get("mups", now):
            await self._read_post_rate(server, self._tree.mup_list, now)
        if self._readings_at is not None and time.time() + self.offset_s >= self._readings_at:
            await self._post_readings(server)

    def _rate(self, server_rate: int | None) -> float:
        return self.cfg.poll_s or float(server_rate or DEFAULT_POLL_S)

    async def _walk(self, server: Server, now: float) -> None:
        dcap = await server.get(codec.DeviceCapability, server.dcap_href)
        time_href = dcap.TimeLink.href if dcap.TimeLink else None
        if time_href:
            await self._read_time(server, time_href)
        if dcap.EndDeviceListLink is None:
            raise codec.Sep2Error(f"{server.dcap_href}: DeviceCapability has no EndDeviceListLink")
        edev_href = await self._end_device(server, dcap.EndDeviceListLink.href)
        edev = await server.get(codec.EndDeviceResponse, edev_href)
        if edev.RegistrationLink is not None and self.cfg.pin is not None:
            reg = await server.get(codec.Registration, edev.RegistrationLink.href)
            if reg.pIN != self.cfg.pin:
                raise PinMismatch(f"the server's Registration PIN {reg.pIN} is not the site's ([sep2] pin = "
                                  f"{self.cfg.pin}): this is not the server the utility registered the site "
                                  "with; the client has stopped (fix the PIN or the server, then restart)")
        if self.cfg.connection_point_id is not None:
            await self._connection_point(server, edev)
        mup_list = dcap.MirrorUsagePointListLink.href if dcap.MirrorUsagePointListLink else None
        self._tree = Tree(edev=edev_href, der_list=edev.DERListLink.href if edev.DERListLink else None,
                          mup_list=mup_list)
        if mup_list and not self.reporter.mups:
            await self.reporter.register_mups(server, mup_list)
            self._schedule_readings()
        self._due["walk"] = now + self._rate(dcap.pollRate)
        self._due.setdefault("programs", now)
        self._due.setdefault("status", now)

    async def _read_time(self, server: Server, href: str) -> None:
        tm = await server.get(codec.Time, href)
        # currentTime is whole seconds, truncated: + 0.5 s is the unbiased estimate (without it, a server in
        # step with the box measured 0 or -1 s at random). A new offset is taken only beyond 1 s of the one
        # in use: an offset that flipped by a second from poll to poll moved every event, and the readings'
        # ticks, with it.
        estimate = tm.currentTime + 0.5 - time.time()
        if abs(estimate - self.offset_s) > 1:
            self.offset_s = round(estimate)
        if abs(self.offset_s) > self.cfg.max_clock_skew_s:
            self._alarm("clock", f"2030.5 server's clock is {self.offset_s:+d} s from the gateway's (more "
                                 f"than [sep2] max_clock_skew_s = {self.cfg.max_clock_skew_s:.0f}); event "
                                 "times follow the server's (check NTP)")
        else:
            self._alarm("clock", None)

    async def _end_device(self, server: Server, list_href: str) -> str:
        """Its own EndDevice's href: found by LFDI, or registered in band (POST, then its Location)."""
        _, devices = await server.get_list(codec.EndDeviceList, list_href, lambda page: page.EndDevice)
        for dev in devices:
            if ((dev.lFDI or "").upper() == self.lfdi or dev.sFDI == self.sfdi) and dev.href:
                return dev.href
        location = await server.post(list_href, codec.EndDevice(lFDI=self.lfdi, sFDI=self.sfdi,
                                                                changedTime=int(time.time())))
        if not location:
            raise codec.Sep2Error(f"POST {list_href}: the server created the EndDevice but gave no Location")
        log.info("2030.5: registered as %s (LFDI %s, SFDI %d)", location, self.lfdi, self.sfdi)
        return location

    async def _connection_point(self, server: Server, edev: codec.EndDeviceResponse) -> None:
        """CSIP-AUS: the site's connection point (NMI) on its EndDevice, PUT when the server's differs
        (read on every walk: a server that lost or changed it gets it again). A server that refuses it is
        an alarm; the controls are read all the same."""
        want = self.cfg.connection_point_id
        if edev.ConnectionPointLink is None:
            self._alarm("connection_point", f"2030.5 server's EndDevice has no ConnectionPointLink: "
                                            f"[sep2] connection_point_id = {want} is not sent")
            return
        href = edev.ConnectionPointLink.href
        try:
            try:
                have = (await server.get(codec.ConnectionPoint, href)).id
            except Refused as err:
                if err.status != 404:
                    raise
                have = None  # none yet
            if have != want:
                await server.put(href, codec.ConnectionPoint(id=want))
                log.info("2030.5: connection point %s put to %s (the server had %r)", want, href, have)
        except Refused as err:
            self._alarm("connection_point", f"2030.5 server refused the ConnectionPoint {want} ([sep2] "
                                            f"connection_point_id): {err}; check the id with the utility")
            return
        self._alarm("connection_point", None)

    async def _poll_programs(self, server: Server, now: float) -> None:
        assert self._tree is not None
        edev = await server.get(codec.EndDeviceResponse, self._tree.edev)
        controls: dict[str, Control] = {}
        defaults: dict[str, DefaultControl] = {}
        rates: list[float] = []
        if edev.FunctionSetAssignmentsListLink is not None:
            fsal, fsas = await server.get_list(codec.FunctionSetAssignmentsList,
                                               edev.FunctionSetAssignmentsListLink.href,
                                               lambda page: page.FunctionSetAssignments)
            rates.append(self._rate(fsal.pollRate))
            for fsa in fsas:
                if fsa.DERProgramListLink is None:
                    continue
                derpl, programs = await server.get_list(codec.DERProgramList, fsa.DERProgramListLink.href,
                                                        lambda page: page.DERProgram)
                rates.append(self._rate(derpl.pollRate))
                for prog in programs:
                    await self._read_program(server, prog, controls, defaults)
        # all read: replaced together (a failure half-way keeps the last whole picture)
        for mrid, c in controls.items():
            if self.controls.get(mrid) != c:
                self.controls[mrid] = c  # one that left the list is kept: removal is not cancellation
                self._unsaved = True  # and kept across a restart with the Responses
        self.defaults = defaults
        self.received.set()
        self._replan.set()
        self._due["programs"] = now + (min(rates) if rates else self._rate(None))

    async def _read_program(self, server: Server, prog: codec.DERProgram, controls: dict[str, Control],
                            defaults: dict[str, DefaultControl]) -> None:
        if prog.DefaultDERControlLink is not None:
            try:
                dd = await server.get(codec.DefaultDERControl, prog.DefaultDERControlLink.href)
            except Refused as err:
                if err.status != 404:
                    raise
            else:
                defaults[prog.mRID] = default_control(dd, prog.mRID, prog.primacy)
        if prog.DERControlListLink is not None:
            _, dercs = await server.get_list(codec.DERControlList, prog.DERControlListLink.href,
                                             lambda page: page.DERControl)
            for derc in dercs:
                c = control(derc, prog.mRID, prog.primacy)
                controls[c.mrid] = c

    async def _send_responses(self, server: Server) -> None:
        """The Responses due, in order, each in the store before it is posted and struck off after; one
        that fails stays first, to go again."""
        await self._save()
        while self._outbox:
            due = self._outbox[0]
            await server.post(due.reply_to, codec.ControlResponse(
                createdDateTime=int(time.time()) + self.offset_s, endDeviceLFDI=self.lfdi, status=due.status,
                subject=due.mrid))
            self._outbox.popleft()
            self._unsaved = True
            await self._save()

    async def _report_der(self, server: Server, now: float) -> None:
        assert self._tree is not None
        if self._tree.der_list is None:
            self._due["status"] = now + self._rate(None)
            return
        derl, ders = await server.get_list(codec.DERList, self._tree.der_list, lambda page: page.DER_)
        if ders:
            await self.reporter.report_der(server, ders[0], self.readings.last, self.offset_s,
                                           self._set_grad_w())
        self._due["status"] = now + self._rate(derl.pollRate)

    def _set_grad_w(self) -> int:
        """The ramp rate the site is set to: the lowest-primacy program's default's setGradW (0: none)."""
        grads = sorted((d.primacy, d.set_grad_w) for d in self.defaults.values() if d.set_grad_w is not None)
        return grads[0][1] if grads else 0

    def _ramp_w_per_s(self) -> float:
        """setGradW of setMaxW per second: the rate 2030.5 limits without rampTms move at (0 until a cycle
        has read the devices' ratings)."""
        view = self.readings.last
        return 0.0 if view is None else instructions.ramp_rate(self._set_grad_w(),
                                                               self.reporter.rated_w(view))

    async def _read_post_rate(self, server: Server, list_href: str, now: float) -> None:
        """The server's postRate, re-read at the MirrorUsagePointList's pollRate: a change is followed from
        the next tick of the new rate (CSIP-AUS ALL-10; the postRate was once read only at registration)."""
        before = self.reporter.post_s
        poll = await self.reporter.read_post_rate(server, list_href)
        if self.reporter.post_s != before:
            log.info("2030.5: postRate %.0f s (was %.0f s)", self.reporter.post_s, before)
            self._schedule_readings()
        self._due["mups"] = now + self._rate(poll)

    def _schedule_readings(self) -> None:
        """The next UTC-aligned tick of postRate (a reading of the interval that ends there), on the
        server's clock: the server reads the readings' times on its own (CSIP-AUS: on minute boundaries),
        and ticks of the box's clock shifted by the offset were aligned only if it was a multiple of them."""
        post = self.cfg.post_s or self.reporter.post_s
        now = time.time() + self.offset_s
        self._readings_at = now - now % post + post

    async def _post_readings(self, server: Server) -> None:
        assert self._readings_at is not None
        end = int(self._readings_at)
        post = int(self.cfg.post_s or self.reporter.post_s)
        # an interval starts where the one posted before it ended: after a change of postRate too, so that
        # none overlap or leave a gap; after a failed post (its samples are gone), one postRate before
        start = end - post if self._readings_from is None else self._readings_from
        self._readings_from = None
        await self.reporter.post_readings(server, self.readings.take(start, end))
        self._readings_from = end
        self._schedule_readings()
