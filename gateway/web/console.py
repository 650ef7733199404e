"""`der-gateway status`: the status page's picture in a terminal, read from the running gateway's
`/api/status` and drawn with rich, with the page's columns and value formats."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gateway.web.page import DEVICE_COLUMNS, INSTRUCTION_COLUMNS, TONES, plain

TONE_STYLES = {"good": "green", "bad": "bold red", "warn": "yellow", "override": "magenta"}


class Unreachable(Exception):
    """The gateway's local API did not answer; the message says where and what to check."""


def fetch_status(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    api = url.rstrip("/") + "/api/status"
    try:
        with urllib.request.urlopen(api, timeout=timeout_s) as r:
            return json.load(r)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise Unreachable(f"cannot read {api}: {reason} — is the gateway running, with [web] enabled = true "
                          "in its site file, and is this its host and port?") from None


def _cell(value: Any, f: str) -> Text:
    style = TONE_STYLES.get(TONES.get(value, ""), "") if f == "badge" else ""
    return Text(plain(value, f), style=style)


def _table(title: str, items: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...]) -> Table:
    table = Table(title=title, title_justify="left", expand=True)
    for _, _, header in columns:
        table.add_column(header)
    for item in items:
        dim = "dim" if item.get("state") in ("offline", "stale") else ""
        table.add_row(*(_cell(item.get(c), f) for c, f, _ in columns), style=dim)
    return table


def render(status: dict[str, Any]) -> Group:
    site, comms = status["site"], status["comms"]
    glance = Table.grid(padding=(0, 2))
    glance.add_column(style="bold")
    glance.add_column()
    glance.add_row("PCC", plain(site.get("pcc_kw"), "kw") + "  (metered, + = export)")
    for label, value, who in (("Target", "target_kw", "target_who"),
                              ("Export limit", "export_limit_kw", "export_who"),
                              ("Import limit", "import_limit_kw", "import_who")):
        set_by = Text(f"  set by {plain(site.get(who), 'text')}", style="cyan")
        glance.add_row(label, Text(plain(site.get(value), "kw")) + set_by)
    serving = Text(f"  serving {plain(site.get('serving'), 'text')}")
    glance.add_row("Mode", _cell(site["mode"], "badge") + serving)
    links = Text()
    for key, label in (("ieso", "IESO"), ("ldc", "LDC"), ("broker", "broker")):
        links += Text(f"{label} ") + _cell(comms[key], "badge") + Text("   ")
    glance.add_row("Comms", links + Text(f"devices {comms['devices']}"))
    name, site_id = status["name"] or status["site_id"], status["site_id"]
    title = f"{name} — site {site_id}, der-gateway {status['version']}"
    alarms = [Text(f"! {a['text']}", style="bold red") for a in status.get("alarms", [])]
    return Group(
        Panel(glance, title=title, subtitle=f"at {plain(status['at'], 'time')}", title_align="left"),
        *alarms,
        _table("Instructions", status["instructions"], INSTRUCTION_COLUMNS),
        _table("Devices", status["devices"], DEVICE_COLUMNS),
    )


def show_status(url: str) -> int:
    try:
        status = fetch_status(url)
    except Unreachable as err:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        return 1
    Console().print(render(status))
    return 0
