"""`der-gateway check-config`: reach every device of a site file once, with the gateway's own drivers.

Each device is connected (SunSpec discovery included), read once and closed; nothing is written. The
summary says what was found (models in use, nameplate, what the device reads now) or what went wrong,
naming the device, its address and the site-file entry to fix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.config import DeviceConfig, SiteFile
from gateway.south.device import Device, DeviceError, Reading
from gateway.south.factory import build_devices
from gateway.south.modbus_client import ModbusConnectionLost, ModbusExceptionResponse, ModbusTimeout


@dataclass(frozen=True)
class Probe:
    device_id: str
    ok: bool
    text: str  # one line: "pv1 (127.0.0.1:15021 unit 1): OK — …" or the problem and its fix


def _fix(err: DeviceError | None, cfg: DeviceConfig, entry: str) -> str:
    """What went wrong, in words, and where in the site file to look."""
    cause = err.__cause__ if err is not None else None
    if isinstance(cause, ModbusConnectionLost) and "cannot connect" in str(cause):
        return (f"connection refused or host unreachable — is the device on? check host and port in {entry}")
    if isinstance(cause, ModbusTimeout):
        return (f"no answer within {cfg.timeout_s:g} s — check host, port and unit_id in {entry} (a gateway "
                f"or another master in the way?), or raise {entry}.timeout_s")
    if isinstance(cause, ModbusExceptionResponse):
        return f"the device refused the request ({cause}) — check unit_id in {entry}"
    if isinstance(cause, ModbusConnectionLost):
        return f"the connection broke ({cause}) — check that only one master polls it; see {entry}"
    detail = str(err).split(": ", 1)[-1] if err is not None else "no reading"
    if "no SunSpec map" in detail:
        return f"{detail} — check unit_id in {entry}, and that the device speaks SunSpec"
    if "profile" in detail:
        return f"{detail} — check kind and profile in {entry}"
    return f"{detail} — check {entry}"


def _found(device: Device, reading: Reading) -> str:
    parts = []
    discovery = getattr(device, "discovery", None)  # SunSpec: (profile variant, model ids in use)
    if discovery is not None:
        variant, models = discovery
        parts.append(f"SunSpec models {', '.join(map(str, models))} ({variant})")
    if reading.rated_kw is not None:
        parts.append(f"nameplate {reading.rated_kw:g} kW")
    if reading.soc_pct is not None:
        parts.append(f"SoC {reading.soc_pct:.0f} %")
    at_pcc = " at the PCC (+ = export)" if device.kind == "meter" else ""
    parts.append(f"now {reading.p_kw:.1f} kW{at_pcc}")
    return ", ".join(parts)


async def _probe(index: int, cfg: DeviceConfig, device: Device) -> Probe:
    address = f"unit {cfg.unit_id}" if cfg.protocol == "sunspec" else f"outstation {cfg.outstation_address}"
    where = f"{cfg.id} ({cfg.host}:{cfg.port} {address}, {cfg.kind})"
    reading = await device.read() if await device.connect() else None
    if reading is None:
        return Probe(cfg.id, False, f"{where}: {_fix(device.last_error, cfg, f'devices[{index}]')}")
    return Probe(cfg.id, True, f"{where}: OK — {_found(device, reading)}")


async def probe_site(site: SiteFile) -> list[Probe]:
    """Every device at once (a silent one costs its timeout, not the sum of all)."""
    devices = build_devices(site)
    try:
        return list(await asyncio.gather(*(_probe(i, cfg, dev) for i, (cfg, dev)
                                           in enumerate(zip(site.devices, devices, strict=True)))))
    finally:
        await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
