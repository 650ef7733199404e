"""The example site (examples/site.toml) on free loopback ports, for tests, benchmarks and experiments."""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path
from typing import Any

from gateway.config import SiteFile, parse_site
from simulators.mosquitto import free_port

EXAMPLE_SITE = Path(__file__).resolve().parents[1] / "examples" / "site.toml"


def example_site(devices: dict[str, dict[str, Any]] | None = None,
                 sections: dict[str, dict[str, Any]] | None = None, **site_overrides: Any) -> SiteFile:
    """examples/site.toml on free ports, with `[site]` fields overridden (e.g. comms_timeout_s=3),
    device fields by id (e.g. devices={"pv1": {"reversion_timeout_s": 4}}) and other sections' fields
    (e.g. sections={"ldc": {"interfaces": ["scada"]}})."""
    data = tomllib.loads(EXAMPLE_SITE.read_text())
    for dev in data["devices"]:
        dev["port"] = free_port()
        dev.update((devices or {}).get(dev["id"], {}))
    data["simulator"]["control_port"] = None
    data["scada"]["port"] = free_port()
    data["simulator"]["load_variation_kw"] = 0.0  # a steady load makes every expected PCC exact
    data["site"].update({"telemetry_interval_s": 1.0, **site_overrides})
    # every site its own store; a gateway restarted on the same SiteFile finds its state again
    data["store"] = {"path": str(Path(tempfile.mkdtemp(prefix="der-gateway-")) / "gateway.sqlite")}
    data["mqtt"] = {"reconnect_max_s": 2.0}
    for name, fields in (sections or {}).items():
        data.setdefault(name, {}).update(fields)
    return parse_site(data)
