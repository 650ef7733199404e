"""Wiring: the gateway's control loop (read devices → decide → write devices) and its north interfaces
(MQTT, the LDC's SCADA and 2030.5: north/port.py), which reach it only through the Port it implements.

Each device has its own poller task, so a slow or silent device never delays the others: the control
cycle works on the latest reading of every device and hands each its command without waiting for the
write. The cycle runs every `control_interval_s`, and at once when an instruction arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from gateway.clocks import clocks
from gateway.config import SiteFile, site_params
from gateway.core import report
from gateway.core.allocation import pcc_at, readings_spread, readings_time
from gateway.core.engine import Cycle, Engine, StatusInfo
from gateway.core.model import (
    DeviceCommand,
    DeviceReading,
    Instruction,
    Invalid,
    MeterReading,
    Role,
)
from gateway.core.model import Inbound as CoreInbound
from gateway.core.outbound import Outbound, Telemetry
from gateway.journal import Encoded, Journal, Written, refused, unwritten
from gateway.north import authority
from gateway.north.mqtt_interface import MqttInterface
from gateway.north.port import CycleView, Devices, NorthInterface, NotJournalled
from gateway.protocol.codec import encode_outbound
from gateway.south.device import Device, DeviceError, Reading
from gateway.south.factory import build_devices
from gateway.store import Store
from gateway.store.outbox import Outbox
from gateway.store.writer import writer_for
from gateway.supervisor import Supervisor
from gateway.web.server import attach_web

log = logging.getLogger(__name__)
T = TypeVar("T")

# Devices a cycle starts reading, or hands a command to, in one turn of the event loop: each starts a
# task step of tens of µs, and an instruction's receipt waits behind a whole turn.
LOOP_CHUNK = 100
SLOW_JOURNAL_S = 1.0  # an instruction waiting this long for the store is logged
NORTH_STATE = "north."  # the store's keys of the north interfaces' own state (Port.save_state)
METER_HISTORY = 32  # meter readings kept: more than the age of any device reading still in use


def utcnow() -> datetime:
    return datetime.now(UTC)


async def in_turns(items: Iterable[T]) -> AsyncIterator[T]:
    """The items, LOOP_CHUNK to a turn of the event loop (see LOOP_CHUNK)."""
    for i, item in enumerate(items, 1):
        yield item
        if i % LOOP_CHUNK == 0:
            await asyncio.sleep(0)


class DevicePoller:
    """One device's reads and writes. A read is started by each control cycle; a command is written as
    soon as it is given, the latest one winning if the device is still busy with the one before."""

    def __init__(self, device: Device, read_deadline_s: float) -> None:
        self.device = device
        self.reading: Reading | None = None
        self.previous: Reading | None = None  # the reading before `reading`: how fast the output moves
        self.command: DeviceCommand | None = None
        self.read_deadline_s = read_deadline_s
        # Its last read outlasted the cycle's read deadline: cycles stop waiting for it (its last
        # reading is used, turning stale in time) until one of its reads comes back in time again.
        self.late = False
        self._read_task: asyncio.Task | None = None
        self._new_command = asyncio.Event()
        # Told of every read: (device, reading or None, seconds, last_error before it); for /metrics.
        self.on_read: Callable[[Device, Reading | None, float, DeviceError | None], None] | None = None

    def start_read(self) -> asyncio.Task | None:
        """A new read, to be waited for; None when the device is late (the read still in flight from an
        earlier cycle, or its last one too slow): a read is started if none is in flight, not waited for."""
        in_flight = self._read_task is not None and not self._read_task.done()
        if not in_flight:
            self._read_task = asyncio.create_task(self._read())
        return None if in_flight or self.late else self._read_task

    async def _read(self) -> None:
        error_before, started = self.device.last_error, time.monotonic()
        reading = await self.device.read()
        seconds = time.monotonic() - started
        # only an answer in time clears it: a dead device's quick "still backing off" must not
        self.late = seconds > self.read_deadline_s or (reading is None and self.late)
        if self.on_read is not None:
            self.on_read(self.device, reading, seconds, error_before)
        if reading is not None:
            self.previous, self.reading = self.reading, reading

    def give(self, command: DeviceCommand) -> None:
        self.command = command
        self._new_command.set()

    async def run_writer(self) -> None:
        while True:
            await self._new_command.wait()
            self._new_command.clear()
            if self.command is not None:
                await self.device.write(self.command)


@dataclass
class Snapshot:
    """What the gateway knows after a cycle: read by telemetry, status and the status page."""

    cycle: Cycle | None = None
    at: datetime | None = None


class Gateway:
    def __init__(self, site: SiteFile, broker_url: str | None = None) -> None:
        self.site = site
        self.interval_s = site.site.control_interval_s
        self.engine = Engine(site_params(site), utcnow())
        self._response_s = {d.id: d.response_time_s for d in site.devices}
        self.store = Store(site.store.path, site.store.outbox_max_messages)  # reads; writes: the journal's
        self.journal = Journal(self.store, writer_for(site.store))
        # Before any device is touched: limits, overrides and seen ids as they were (TDC-19).
        self.restored = self.journal.restore(self.engine)
        # Reads that miss this deadline leave their device's last reading in use (it turns stale), and
        # the next cycles do not wait for that device, so a slow or silent device cannot hold up the
        # cycle (nor the writes to the others); readings of one cycle are taken together, so the load
        # estimate (Σ devices − meter) compares like with like.
        self.read_deadline_s = 0.5 * self.interval_s
        self.pollers = {d.id: DevicePoller(d, self.read_deadline_s)
                        for d in build_devices(site, on_write=self.journal.on_write)}
        self.meter_id = site.meter.id
        # Recent meter readings (time, kW): devices read in waves may be older than the meter's last
        # reading, and the load estimate takes the PCC at their time (see MeterReading.p_kw_at_devices).
        self._meter_history: deque[tuple[float, float]] = deque(maxlen=METER_HISTORY)
        # With more devices than requests allowed in flight (MAX_IN_FLIGHT), a cycle's reads go out in
        # waves, in this order: the meter in the middle is read at about the mean time of the device
        # readings, so that the load estimate (Σ devices − meter) compares like with like while the
        # output ramps.
        others = [p for dev_id, p in self.pollers.items() if dev_id != self.meter_id]
        middle = len(others) // 2
        self._read_order = [*others[:middle], self.pollers[self.meter_id], *others[middle:]]
        self.supervisor = Supervisor()  # before the MQTT link: its last will is a status, with the alarms
        self.snapshot = Snapshot()
        self._wake = asyncio.Event()
        self._handing_out: asyncio.Task | None = None  # the last cycle's commands on their way (_hand_out)
        # One instruction at a time from the engine to the disk, and no control cycle meanwhile: one that
        # cannot be written rolls the engine back to its state before it, which must undo nothing else
        # (see Journal.instruction).
        self._journalling = asyncio.Lock()
        self._online: dict[str, bool] = {}
        self.last_cycle_s = 0.0  # how long the last control cycle took (read, decide, hand out writes)
        self.on_cycle_time: Callable[[float], None] | None = None  # told each cycle's duration (/metrics)
        self.started_up = asyncio.Event()  # set once every device has been read, or has failed to be
        self.started = time.monotonic()
        # Called after every control cycle (e.g. the status page).
        self.cycle_listeners: list[Callable[[Cycle, MeterReading | None, list[DeviceReading]], None]] = []
        # The north interfaces (port.py): MQTT, and the LDC's SCADA and 2030.5 where enabled.
        self.mqtt = MqttInterface(self, broker_url)
        self.north: list[NorthInterface] = [self.mqtt]
        # Long-running parts added by optional faces (DNP3 outstation, web page): run beside the loop.
        self.services: list[Callable[[], Coroutine[Any, Any, None]]] = []
        # Called with each inbound message and the engine's answers to it (e.g. /metrics).
        self.inbound_listeners: list[Callable[[CoreInbound | Invalid, list[Outbound]], None]] = []
        if site.web.enabled:
            attach_web(self)
        if site.scada.enabled:
            # Imported here: a site without SCADA runs where the opendnp3 binding is missing.
            from gateway.north.scada import ScadaOutstation

            self.north.append(ScadaOutstation(self))
        if site.sep2.enabled:
            from gateway.north.sep2.client import Sep2Client

            self.north.append(Sep2Client(self))

    # ---- north: the Port of the interfaces (north/port.py) ------------------------------------------
    def heard(self, role: Role) -> None:
        self.engine.heard(role, *clocks())

    def info(self) -> StatusInfo:
        return self.engine.status(*clocks())

    def live(self, role: Role) -> Mapping[str, Instruction]:
        return {msg_id: rec.msg for msg_id, rec in self.engine.state.store.records[role].items()}

    def devices(self) -> Devices:
        polled = [p.device for p in self.pollers.values()]
        return Devices(online=sum(d.online for d in polled), total=len(polled))

    async def submit(self, msg: CoreInbound | Invalid, source: str) -> list[Outbound]:
        """Every instruction, from MQTT, LDC SCADA (DNP3) or 2030.5, takes this one path: checked against
        what its interface may say for the LDC (north/authority.py), decided by the
        core, written to disk with its decision, its answers queued for MQTT, and followed at once by a
        control cycle (TDC-11). Nothing here waits for the broker: a broker that stops answering does not
        delay the instruction's effect. One the store cannot take is answered all the same (`refused`, or
        `unwritten` for the LDC's). Raises NotJournalled, with nothing answered, when writing it failed
        otherwise (a bug in the store's code: see Journal.instruction)."""
        msg = authority.check(msg, source, self.site.ldc_interfaces, self.site.ldc.default_envelope)
        async with self._journalling:
            now, mono = clocks()
            outs = self.engine.receive(msg, now, mono)
            encoded = self._encode(outs)
            written = self.journal.instruction(msg, source, encoded, self.engine, now)
            try:
                stands = await self._journalled(written, msg, source)
            except Exception as err:
                self._wake.set()  # it is in force in memory: the devices follow it
                raise NotJournalled(str(err)) from err
            if not stands or (written.kept and not written.stored):
                assert not isinstance(msg, Invalid)  # only an instruction changes what is in force
                cause = self.journal.health.cause()
                # not on disk: a market instruction is not in force (the engine is back as it was before
                # it) and is refused; the LDC's stays in force, and its answer says it was not written
                outs = unwritten(outs, msg, cause) if written.kept else refused(msg, now, cause)
                encoded = self._encode(outs)
                self.journal.outbound(encoded, now)
        for listener in self.inbound_listeners:
            listener(msg, outs)
        self._outbound(encoded)
        self._wake.set()
        return outs

    @staticmethod
    async def _journalled(written: Written, msg: CoreInbound | Invalid, source: str) -> bool:
        """Await an instruction's journal entry; one that waits long for the store (a disk that hangs, a
        lock held by another process, for up to SQLite's busy timeout) is logged while it waits: it is
        received, unanswered and not yet acknowledged."""
        waiting = asyncio.ensure_future(written)
        if not (await asyncio.wait({waiting}, timeout=SLOW_JOURNAL_S))[0]:
            kind, role = (msg.msg_type, msg.role) if isinstance(msg, Invalid) else (msg.type, msg.issuer)
            log.warning("%s %s from %s (%s) waits for the store: not answered until it is written",
                        kind, msg.id, role, source)
        return await waiting

    async def _instruction_settled(self) -> None:
        """Until no instruction is on its way to disk: one that cannot be written is rolled back, and no
        control cycle may have acted on it or saved it meanwhile. The caller hands its cycle to the journal
        without awaiting anything before, so that no instruction starts in between."""
        async with self._journalling:
            pass

    def _encode(self, outs: list[Outbound]) -> list[Encoded]:
        return [encode_outbound(out, self.site.site.id) for out in outs]

    def _outbound(self, encoded: list[Encoded]) -> None:
        """One batch of answers, journalled, to every north interface (MQTT queues them for the broker)."""
        for north in self.north:
            north.on_outbound(encoded)

    # ---- the control cycle -----------------------------------------------------------------------------
    def _readings(self) -> tuple[MeterReading | None, list[DeviceReading]]:
        meter: MeterReading | None = None
        devices: list[DeviceReading] = []
        # when the readings of the devices that count were taken, and how fast each device was moving
        read_at: list[tuple[float, float]] = []
        for dev_id, poller in self.pollers.items():
            r, dev = poller.reading, poller.device
            if dev_id == self.meter_id:
                continue
            if r is None:
                devices.append(DeviceReading(id=dev_id, kind=dev.kind, online=False, stale=True, p_kw=0.0,
                                             q_kvar=0.0, rated_kw=0.0, available_kw=0.0, max_charge_kw=0.0,
                                             soc_pct=None, connected=False))
                continue
            devices.append(DeviceReading(
                id=dev_id, kind=dev.kind, online=dev.online, stale=dev.stale, p_kw=r.p_kw,
                q_kvar=r.q_kvar or 0.0, rated_kw=r.rated_kw or 0.0,
                available_kw=r.available_kw if r.available_kw is not None else 0.0,
                # a device that does not say counts as connected (following.py skips devices out of service)
                max_charge_kw=r.max_charge_kw, soc_pct=r.soc_pct, connected=r.connected is not False,
                response_s=self._response_s[dev_id],
            ))
            # A stale reading (a slow or failing device's last one, seconds old) is not one the others
            # share: its rate, from long ago, would take the PCC's time back to it.
            if dev.online and not dev.stale:
                before, rate = poller.previous, 0.0
                if before is not None and r.at > before.at:
                    rate = abs(r.p_kw - before.p_kw) / (r.at - before.at)
                read_at.append((r.at, rate))
        r, dev = self.pollers[self.meter_id].reading, self.pollers[self.meter_id].device
        if r is not None:
            if not self._meter_history or self._meter_history[-1][0] != r.at:
                self._meter_history.append((r.at, r.p_kw))
            at_devices, spread = None, 0.0
            if read_at:
                t = readings_time(read_at)
                at_devices, spread = pcc_at(self._meter_history, t), readings_spread(read_at, t)
            # 20x meter models carry no nominal voltage, so v_pu may be unknown: 1.0 is reported.
            meter = MeterReading(p_kw=r.p_kw, q_kvar=r.q_kvar or 0.0, v_pu=r.v_pu or 1.0, hz=r.hz or 60.0,
                                 online=dev.online, stale=dev.stale, p_kw_at_devices=at_devices,
                                 load_spread_kw=spread)
        return meter, devices

    async def run_cycle(self, read: bool = True) -> Cycle:
        """One control cycle: read every device (only the meter if `read` is False), decide, hand out the
        commands.

        The cycle an instruction triggers reads the meter alone: a hold starts from the export now, and the
        devices' last readings, at most an interval old, are set against the meter's at their time (see
        MeterReading.p_kw_at_devices), so that the instruction reaches the devices without waiting for a
        round of reads (about 50 ms at 100 devices, the whole read deadline at 1,000)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_deadline_s
        reads = []
        async for poller in in_turns(self._read_order if read else [self.pollers[self.meter_id]]):
            if (task := poller.start_read()) is not None:
                reads.append(task)
        # While the reads are out: the device writes since the last cycle into the audit log, a batch at
        # a time, an instruction's answer going out between two batches.
        for _ in self.journal.writes(utcnow()):
            await asyncio.sleep(0)
        if reads:
            await asyncio.wait(reads, timeout=max(0.0, deadline - loop.time()))
        meter, devices = self._readings()
        await asyncio.sleep(0)  # an instruction that came meanwhile is decided before the cycle, and in it
        await self._instruction_settled()  # nothing awaits from here until the journal has the cycle
        now, mono = clocks()
        cycle = self.engine.cycle(now, meter, devices, new_readings=read, mono=mono)
        now = cycle.at  # the core's time (a wall clock that stepped back is held, see core/clock.py)
        self._hand_out(cycle.commands)
        self._log_cycle(cycle)
        self.snapshot = Snapshot(cycle=cycle, at=now)
        for listener in self.cycle_listeners:
            listener(cycle, meter, devices)
        view = CycleView(cycle, meter, devices)
        for north in self.north:
            try:
                north.on_cycle(view)
            except Exception:  # an interface's report must not stop control
                log.exception("%s: cycle report failed", type(north).__name__)
        encoded = self._encode(cycle.outbound)
        # on disk before it is published (or known not to be: control goes on, what was lost is counted)
        events = self._device_events() + self._cycle_events(cycle)
        await self.journal.cycle(cycle, encoded, self.engine, events)
        self._outbound(encoded)  # queued: the next cycle does not wait for the broker
        self.mqtt.publish_status()
        return cycle

    def _hand_out(self, commands: list[DeviceCommand]) -> None:
        """Give each device its command, LOOP_CHUNK at a time: each wakes the device's writer, and a
        thousand of them at once would keep the loop (and an instruction's receipt) for tens of ms."""
        if self._handing_out is not None:
            self._handing_out.cancel()  # every device it had yet to reach has a newer command here
        self._handing_out = asyncio.create_task(self._give(commands))

    async def _give(self, commands: list[DeviceCommand]) -> None:
        async for cmd in in_turns(commands):
            self.pollers[cmd.id].give(cmd)

    def _device_events(self) -> list[dict[str, Any]]:
        """A device that went offline or came back since the last cycle, for the audit log."""
        events = []
        for dev_id, poller in self.pollers.items():
            online, error = poller.device.online, poller.device.last_error
            # a device still being discovered is not news; one that failed or changed is
            was = self._online.get(dev_id, True if error is not None else online)
            if online != was:
                events.append({"event": "device_online" if online else "device_offline", "device": dev_id,
                               **({} if online or error is None else {"error": str(error)})})
            self._online[dev_id] = online
        return events

    @staticmethod
    def _cycle_events(cycle: Cycle) -> list[dict[str, Any]]:
        """What the core noticed this cycle, for the audit log: devices that stopped or started following
        their commands, readings refused at its boundary, a wall clock that stepped."""
        events: list[dict[str, Any]] = [
            {"event": "device_following" if ch.following else "device_not_following", "device": ch.id,
             "p_kw": round(ch.p_kw, 1), "command_kw": round(ch.command_kw, 1)} for ch in cycle.follow_changes]
        events += [{"event": "reading_refused", "device": dev_id, "why": "a value is not a finite number"}
                   for dev_id in cycle.refused]
        if cycle.clock_jump_s is not None:
            events.append({"event": "clock_jump", "seconds": round(cycle.clock_jump_s, 3)})
        return events

    @staticmethod
    def _log_cycle(cycle: Cycle) -> None:
        for ch in cycle.follow_changes:
            if ch.following:
                log.info("%s follows its command again (%.1f kW against %.1f kW)", ch.id, ch.p_kw,
                         ch.command_kw)
            else:
                log.warning("%s does not follow its command (%.1f kW against %.1f kW): its share goes to the "
                            "other devices, and the command is re-sent", ch.id, ch.p_kw, ch.command_kw)
        for dev_id in cycle.refused:
            log.warning("%s: reading refused (a value is not a finite number); it counts as not answering",
                        dev_id)
        if cycle.clock_jump_s is not None:
            jump = cycle.clock_jump_s
            log.warning("the wall clock stepped by %+.1f s against the monotonic clock; %s", jump,
                        "the gateway keeps its own time until it catches up" if jump < 0
                        else "instruction windows follow it")

    async def _control_loop(self) -> None:
        """A cycle every interval on a fixed schedule (no drift), and one at once on an instruction."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives as the
            # event is set (cpython gh-86296), and a flood of instructions made that likely: the loop ran
            # on after the gateway was stopped, and its stop never ended
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_at - loop.time())):
                    await self._wake.wait()
            woken = self._wake.is_set()
            self._wake.clear()
            started = loop.time()
            # the scheduled cycle reads, even when an instruction came at its time: instructions
            # arriving faster than the interval must not starve the readings
            scheduled = not woken or started >= next_at
            try:
                await self.run_cycle(read=scheduled)
            except Exception:  # one bad cycle must not stop control; the next one starts afresh
                log.exception("control cycle failed")
            self.last_cycle_s = loop.time() - started
            if self.on_cycle_time is not None:
                self.on_cycle_time(self.last_cycle_s)
            if not self.started_up.is_set() and all(p.reading is not None or p.device.last_error is not None
                                                    for p in self.pollers.values()):
                self.started_up.set()
            if self.last_cycle_s > self.interval_s:
                log.warning("control cycle took %.2f s, longer than control_interval_s = %.2f s",
                            self.last_cycle_s, self.interval_s)
            if scheduled:
                next_at = max(next_at + self.interval_s, loop.time())

    # ---- telemetry and status: the Port's (north/port.py) ------------------------------------------
    def telemetry(self, seq: int, now: datetime) -> Telemetry | None:
        cycle = self.snapshot.cycle
        if cycle is None:
            return None
        meter, devices = self._readings()
        return report.telemetry(self.site.site.id, seq, now, cycle, meter, devices)

    @property
    def outbox(self) -> Outbox:
        return self.store.outbox

    async def store_telemetry(self, seq: int, payload: bytes) -> bool:
        return await self.journal.telemetry(seq, payload)

    async def telemetry_sent(self, seq: int) -> bool:
        return await self.journal.telemetry_sent(seq)

    def load_state(self, key: str) -> Any | None:
        return self.store.state.load(NORTH_STATE + key)

    async def save_state(self, key: str, value: Any) -> bool:
        return await self.journal.state(NORTH_STATE + key, value)

    def alarms(self, info: StatusInfo) -> tuple[str, ...]:
        """What an operator must see: the core's (devices not following, a limit not met, the clock),
        then the gateway's own (tasks that failed, telemetry lost to a full outbox, the store) and every
        north interface's (e.g. answers lost to a full MQTT queue, a 2030.5 server that refuses the site)."""
        alarms = info.alarms + self.supervisor.alarms()
        for north in self.north:
            alarms += north.alarms()
        evicted = self.store.outbox.evicted
        if evicted:
            alarms += (f"telemetry outbox full: {evicted} oldest messages dropped "
                       f"(store.outbox_max_messages = {self.store.outbox.max_messages})",)
        return alarms + self.journal.health.alarms()

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Every part under the supervisor (supervisor.py): one that fails is restarted, the rest go on."""
        sup = self.supervisor
        for dev_id, poller in self.pollers.items():
            sup.spawn(f"write-{dev_id}", poller.run_writer)
        for north in self.north:
            for name, factory in north.services().items():
                sup.spawn(name, factory)
        sup.spawn("control", self._control_loop)
        for service in self.services:
            sup.spawn(service.__qualname__, service)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            if self._handing_out is not None:
                self._handing_out.cancel()
            await sup.stop()
            await asyncio.gather(*(p.device.close() for p in self.pollers.values()), return_exceptions=True)
            await asyncio.to_thread(self.journal.close)
            self.store.close()
