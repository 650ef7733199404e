"""Fixtures shared by every test package: free ports and site files built from examples/site.toml."""

from __future__ import annotations

import json
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import SiteFile, load_site

EXAMPLE_SITE = Path(__file__).resolve().parent.parent / "examples" / "site.toml"

_handed_out: set[int] = set()


def _free_port() -> int:
    """A loopback TCP port nobody listens on now, never the same twice in one test session."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@pytest.fixture
def free_port() -> Callable[[], int]:
    """`free_port()` → a free loopback port (a new one on every call)."""
    return _free_port


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both_tables = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both_tables else value
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml(data: dict[str, Any]) -> str:
    """Just enough TOML for a site file: tables, arrays of tables, nested tables inline; None omitted."""
    lines: list[str] = []
    for name, section in data.items():
        rows = section if isinstance(section, list) else [section]
        for row in rows:
            lines.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in row.items() if v is not None]
            lines.append("")
    return "\n".join(lines)


@pytest.fixture
def make_site(tmp_path: Path) -> Callable[..., tuple[SiteFile, Path]]:
    """`make_site(**overrides)` → (SiteFile, path of its TOML file): examples/site.toml on free ports.

    Every device port and the control port are free loopback ports. Overrides merge into the file:
    top-level sections by name (`simulator={"load_variation_kw": 0}`, `site={...}`) and devices by id
    (`devices={"pv1": {"sim": {"rated_kw": 50}}}`; a device mapped to None is removed). The file is
    written and loaded back, so what a test gets is exactly what `load_site` makes of it.
    """
    counter = iter(range(1_000_000))

    def _make(**overrides: Any) -> tuple[SiteFile, Path]:
        data = tomllib.loads(EXAMPLE_SITE.read_text(encoding="utf-8"))
        device_over: dict[str, Any] = overrides.pop("devices", {})
        devices = []
        for dev in data["devices"]:
            if dev["id"] in device_over and device_over[dev["id"]] is None:
                continue
            dev = _merge(dev, {"port": _free_port(), **(device_over.get(dev["id"]) or {})})
            devices.append(dev)
        data["devices"] = devices
        data["simulator"]["control_port"] = _free_port()
        data = _merge(data, overrides)
        path = tmp_path / f"site-{next(counter)}.toml"
        path.write_text(_toml(data), encoding="utf-8")
        return load_site(path), path

    return _make
