"""The one shape of a north interface: what it may use of the gateway (`Port`), and what the gateway asks
of it (`NorthInterface`).

MQTT's LDC and IESO topics, the LDC's DNP3 SCADA and the LDC's IEEE 2030.5 server are adapters of this
shape: each turns protocol input into core instructions (`Port.submit`, the one path of every
instruction: authority, decision, journal, answers) and the core's outcomes (each cycle's decision,
the status) into protocol output. None imports `gateway.app.Gateway` or reads its internals, so an
interface is tested, replaced or added without touching the control loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.config import SiteFile
from gateway.core.engine import Cycle, StatusInfo
from gateway.core.model import DeviceReading, Inbound, Instruction, Invalid, MeterReading, Role
from gateway.core.outbound import Outbound


@dataclass(frozen=True)
class Devices:
    """The site's devices as the pollers see them, for an interface's counts and ratings."""

    online: int
    total: int


@dataclass(frozen=True)
class CycleView:
    """One control cycle as an interface sees it: the decision and the readings it was made on."""

    cycle: Cycle
    meter: MeterReading | None
    devices: list[DeviceReading]


class Port(Protocol):
    site: SiteFile

    async def submit(self, msg: Inbound | Invalid, source: str) -> list[Outbound]:
        """Decide an instruction, journal it, answer it, wake a cycle (see Gateway.submit)."""
        ...

    def heard(self, role: Role) -> None:
        """A valid exchange with the role's peer: its link is ok (PROTOCOL §6)."""
        ...

    def info(self) -> StatusInfo:
        """Mode, comms, the instructions in force and the core's alarms, now."""
        ...

    def live(self, role: Role) -> Mapping[str, Instruction]:
        """The role's instructions the core holds (in force or scheduled), by id."""
        ...

    def devices(self) -> Devices:
        ...


class NorthInterface(Protocol):
    async def run(self) -> None:
        """The interface's service, supervised by the gateway (restarted with backoff if it fails)."""
        ...

    def on_cycle(self, view: CycleView) -> None:
        """After every control cycle: the interface's points, reports, events."""
        ...

    def alarms(self) -> tuple[str, ...]:
        """What an operator must see in status and on the page (e.g. a server that refuses the site)."""
        ...
