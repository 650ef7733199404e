"""A simulated site with the gateway's device drivers on it, for the south and field fixtures."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import SiteFile
from gateway.south.device import Device, WriteRecord
from simulators.site import SiteSimulator


@dataclass
class DrivenSite:
    config: SiteFile
    sim: SiteSimulator
    devices: dict[str, Device]
    writes: list[WriteRecord] = field(default_factory=list)  # every write the drivers made, in order

    def writes_to(self, device_id: str, point: str | None = None) -> list[WriteRecord]:
        return [w for w in self.writes if w.device_id == device_id and (point is None or w.point == point)]
