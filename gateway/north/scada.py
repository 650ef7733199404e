"""LDC SCADA over DNP3 (PROTOCOL §9): the gateway's outstation, a north interface (north/port.py).
The rules are in `scada_map`; the DNP3 stack in `gateway.dnp3.opendnp3_stack`.

A command is checked on the opendnp3 thread that receives it (a plain function of the command, so the
master gets its status at once); an operated one is queued to the loop, where a single worker turns it
into LDC messages and submits them on the same path as MQTT instructions, one at a time in arrival
order (each sees the instructions the previous one put in force). The submit wakes a control cycle at
once (TDC-11), and after every cycle the points are set from that cycle's telemetry content. Any request
from the master (a poll, a confirm, a command) keeps the LDC link ok.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.clocks import clocks
from gateway.core import report
from gateway.core.model import Envelope
from gateway.dnp3.opendnp3_stack import AnalogCommand, Command, OutstationStack
from gateway.journal import Encoded
from gateway.north.port import CycleView, Port
from gateway.north.scada_map import (
    Facts,
    InForce,
    Operated,
    ScadaState,
    check,
    load_point_list,
    messages,
    values,
)

log = logging.getLogger(__name__)
SOURCE = "scada"  # how the audit log names where these instructions came from


def _operated(cmd: Command) -> Operated:
    if isinstance(cmd, AnalogCommand):
        return Operated(cmd.index, value=cmd.value)
    return Operated(cmd.index, on=cmd.on)


class ScadaOutstation:
    def __init__(self, port: Port) -> None:
        self.port = port
        self.points = load_point_list()
        self.state = ScadaState(setpoint=self._setpoint_in_force())
        self._queue: asyncio.Queue[Command] = asyncio.Queue()
        cfg = port.site.scada
        self.stack = OutstationStack(
            name="scada", host=cfg.host, port=cfg.port, address=cfg.outstation_address,
            master_address=cfg.master_address, point_count=self.points.point_count,
            check=lambda cmd: check(self.points, _operated(cmd)), on_operate=self._queue.put_nowait,
            on_request=self._heard)
        self._serving = False

    def _setpoint_in_force(self) -> float:
        """AO88 as the SCADA limit in force says: after a restart the core brings the limit back from its
        store, and its read-back (AI149) must show it. The default when there is none."""
        cap = self.port.site.site.export_cap_kw
        limit = InForce.of(self.port.info().active).limit
        msg = self.port.live("ldc").get(limit[-1]) if limit else None
        kw = msg.limits.export_limit_kw if isinstance(msg, Envelope) else None
        return self.points.default_setpoint if kw is None or not cap else round(kw / cap * 1000)

    def _heard(self) -> None:
        self.port.heard("ldc")

    async def run(self) -> None:
        """The service: serve SCADA until cancelled."""
        self.stack.start()
        self._serving = True
        try:
            while True:
                cmd = await self._queue.get()
                try:
                    await self._execute(cmd)
                except Exception:  # one bad command must not end the outstation
                    log.exception("SCADA command %s failed", cmd)
        finally:
            self._serving = False
            self.stack.stop()

    async def _execute(self, cmd: Command) -> None:
        port = self.port
        in_force = InForce.of(port.info().active)
        msgs = messages(self.points, self.state, _operated(cmd), in_force, port.site.site.export_cap_kw,
                        clocks()[0])
        log.info("SCADA %s: %s", cmd, ", ".join(str(m.id) for m in msgs) or "nothing to change")
        for msg in msgs:
            await port.submit(msg, source=SOURCE)

    def on_cycle(self, view: CycleView) -> None:
        """Every point from this cycle's numbers, in one update."""
        if not self._serving:
            return
        status, counts = self.port.info(), self.port.devices()
        cycle, devices = view.cycle, view.devices
        facts = Facts(
            comms=status.comms, in_force=InForce.of(status.active), setpoint=self.state.setpoint,
            devices_online=counts.online, devices_total=counts.total,
            rated_kw=sum(d.rated_kw for d in devices), available_kw=sum(d.available_kw for d in devices),
            export_binding=cycle.decision.export_binding, import_binding=cycle.decision.import_binding)
        t = report.telemetry(self.port.site.site.id, 0, cycle.at, cycle, view.meter, devices)
        v = values(self.points, t, facts)
        self.stack.update(binary_inputs=v.binary_inputs, analog_inputs=v.analog_inputs,
                          binary_outputs=v.binary_outputs, analog_outputs=v.analog_outputs)

    def services(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        return {"scada": self.run}

    def on_outbound(self, encoded: list[Encoded]) -> None:
        pass  # the master reads the outcome from the points (on_cycle)

    def alarms(self) -> tuple[str, ...]:
        return ()
