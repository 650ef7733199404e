"""Devices from the site file: the one place that maps a `DeviceConfig` to its driver."""

from __future__ import annotations

from gateway.config import DeviceConfig, SiteFile
from gateway.south.device import STALE_AFTER_CYCLES, Device, WriteHook
from gateway.south.modbus_client import ModbusPool
from gateway.south.register_device import RegisterDevice
from gateway.south.sunspec_device import SunSpecDevice


def make_device(
    cfg: DeviceConfig,
    control_interval_s: float,
    *,
    pool: ModbusPool | None = None,
    on_write: WriteHook | None = None,
) -> Device:
    """The driver of one device, not connected yet (`await device.connect()`).

    Modbus devices on one bus (a host:port, or a serial port) share one connection only if they are
    given the same `pool` (`build_devices` does that); without one, the device gets a connection of its
    own.
    """
    stale_after_s = STALE_AFTER_CYCLES * control_interval_s
    match cfg.protocol:
        case "sunspec":
            return SunSpecDevice.from_config(
                cfg, pool=pool or ModbusPool(), stale_after_s=stale_after_s, on_write=on_write
            )
        case "modbus":  # no SunSpec: a vendor profile maps the registers
            return RegisterDevice.from_config(
                cfg, pool=pool or ModbusPool(), stale_after_s=stale_after_s, on_write=on_write
            )
        case "dnp3":
            # Imported here: a site without DNP3 devices runs where the opendnp3 binding is missing.
            from gateway.south.dnp3_device import Dnp3Device

            return Dnp3Device.from_config(cfg, stale_after_s=stale_after_s, on_write=on_write)
    raise ValueError(f"{cfg.id}: no driver for protocol {cfg.protocol!r}")


def build_devices(site: SiteFile, *, on_write: WriteHook | None = None) -> list[Device]:
    """Every device of the site, one connection per Modbus bus (host:port or serial port)."""
    pool = ModbusPool()
    interval = site.site.control_interval_s
    return [make_device(cfg, interval, pool=pool, on_write=on_write) for cfg in site.devices]
