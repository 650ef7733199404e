"""Fixtures shared by every test package: free ports and site files built from examples/site.toml."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway.config import SiteFile, load_site
from simulators.mosquitto import free_port as free_port_

EXAMPLE_SITE = Path(__file__).resolve().parent.parent / "examples" / "site.toml"

@pytest.fixture
def free_port() -> Callable[[], int]:
    """`free_port()` → a free loopback port (a new one on every call)."""
    return free_port_


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both_tables = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both_tables else value
    return out


def _without_none(v: Any) -> Any:
    """TOML has no null: a None in an override means "leave it out"."""
    if isinstance(v, dict):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_without_none(x) for x in v]
    return v


@pytest.fixture
def make_site(tmp_path: Path) -> Callable[..., tuple[SiteFile, Path]]:
    """`make_site(**overrides)` → (SiteFile, path of its TOML file): examples/site.toml on free ports.

    Every device port, the control port and the SCADA port are free loopback ports. Overrides merge
    into the file: top-level sections by name (`simulator={"load_variation_kw": 0}`, `site={...}`) and
    devices by id (`devices={"pv1": {"sim": {"rated_kw": 50}}}`; a device mapped to None is removed).
    The file is written and loaded back, so what a test gets is exactly what `load_site` makes of it.
    """
    counter = iter(range(1_000_000))

    def _make(**overrides: Any) -> tuple[SiteFile, Path]:
        data = tomllib.loads(EXAMPLE_SITE.read_text(encoding="utf-8"))
        device_over: dict[str, Any] = overrides.pop("devices", {})
        devices = []
        for dev in data["devices"]:
            if dev["id"] in device_over and device_over[dev["id"]] is None:
                continue
            dev = _merge(dev, {"port": free_port_(), **(device_over.get(dev["id"]) or {})})
            devices.append(dev)
        data["devices"] = devices
        data["simulator"]["control_port"] = free_port_()
        data["scada"]["port"] = free_port_()
        data = _merge(data, overrides)
        path = tmp_path / f"site-{next(counter)}.toml"
        path.write_text(tomli_w.dumps(_without_none(data)), encoding="utf-8")
        return load_site(path), path

    return _make
