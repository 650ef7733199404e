"""The status page: HTML rendered on the server from `/api/status`'s object, kept live by a small script.

No build step and nothing from a CDN (the box may be offline): the CSS and the script are inline. The
server fills every value in, so the page says something useful without its script; the script then
polls `/api/status` and refills the same places, which the markup names: an element with
`data-k="site.pcc_kw" data-f="kw"` shows that field with that format, a table with `data-list` shows
that list, one row per item, one cell per header `data-col`/`data-f`. Both sides format values the
same way (`plain` and `fmt` here and in the script; `der-gateway status` uses `plain` and `TONES` too).
The chart is the script's alone: a `<canvas>` of the last hour.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any

POLL_MS = 2000

# (field, format, header) of the two tables; the script reads them back from the header cells.
INSTRUCTION_COLUMNS = (
    ("issuer", "upper", "From"), ("type", "text", "Type"), ("id", "text", "Id"), ("what", "text", "What"),
    ("start", "time", "Start"), ("end", "time", "End"), ("state", "badge", "State"),
    ("status", "badge", "Response"), ("reason", "text", "Reason"), ("accepted_kw", "kw", "Accepted"),
)
ALARM_COLUMNS = (("text", "text", "What an operator must see"),)
DEVICE_COLUMNS = (
    ("id", "text", "Device"), ("kind", "text", "Kind"), ("state", "badge", "State"),
    ("p_kw", "kw", "Output"), ("setpoint_kw", "kw", "Setpoint"), ("soc_pct", "pct", "SoC"),
    ("error", "text", "Last error"),
)


# How a state reads at a glance: each value shown as a badge has a tone (the page's colour classes).
TONES = {
    **dict.fromkeys(("ok", "online", "connected", "accepted", "normal", "in force", "started", "completed"),
                    "good"),
    **dict.fromkeys(("lost", "offline", "disconnected", "rejected", "failsafe", "failed", "not following"),
                    "bad"),
    **dict.fromkeys(("stale", "constrained", "pending"), "warn"),
    "overridden": "override",
}


def plain(value: Any, f: str) -> str:
    """A value as text in format `f`; the script's `plain` is the same function."""
    if value is None or value == "":
        return "—"
    if f == "kw":
        return f"{value:.1f} kW"
    if f == "pct":
        return f"{value:.0f} %"
    if f == "time":  # RFC 3339 UTC → HH:MM:SS, said to be UTC
        return datetime.fromisoformat(value).strftime("%H:%M:%SZ")
    if f == "upper":
        return str(value).upper()
    return str(value)


def fmt(value: Any, f: str) -> str:
    """A value as the page shows it (HTML); the script's `fmt` is the same function."""
    if f == "badge" and value is not None:
        return f'<span class="badge t-{TONES.get(value, "none")}">{html.escape(str(value))}</span>'
    return html.escape(plain(value, f))


def _get(status: dict[str, Any], path: str) -> Any:
    node: Any = status
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _field(status: dict[str, Any], path: str, f: str) -> str:
    return f'<span data-k="{path}" data-f="{f}">{fmt(_get(status, path), f)}</span>'


def _table(status: dict[str, Any], name: str, columns: tuple[tuple[str, str, str], ...], empty: str) -> str:
    head = "".join(f'<th data-col="{c}" data-f="{f}">{title}</th>' for c, f, title in columns)
    rows = "".join(
        f'<tr data-id="{html.escape(str(item["id"]))}" data-state="{html.escape(str(item["state"]))}">'
        + "".join(f"<td>{fmt(item.get(c), f)}</td>" for c, f, _ in columns) + "</tr>"
        for item in status[name])
    return (f'<table data-list="{name}" data-empty="{html.escape(empty)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{rows or _empty_row(len(columns), empty)}</tbody></table>')


def _empty_row(span: int, text: str) -> str:
    return f'<tr><td colspan="{span}" class="empty">{html.escape(text)}</td></tr>'


def _script_json(value: Any) -> str:
    """JSON inside <script>: `<` escaped, so no string (an instruction id, say) can close the element."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def render_page(status: dict[str, Any]) -> str:
    s = status

    def card(title: str, value: str, detail: str = "") -> str:
        return f'<div class="card"><h3>{title}</h3><div class="big">{value}</div><p>{detail}</p></div>'

    cards = "".join([
        card("PCC", _field(s, "site.pcc_kw", "kw"), "metered, + = export"),
        card("Target", _field(s, "site.target_kw", "kw"),
             "set by " + _field(s, "site.target_who", "text")),
        card("Export limit", _field(s, "site.export_limit_kw", "kw"),
             "set by " + _field(s, "site.export_who", "text")),
        card("Import limit", _field(s, "site.import_limit_kw", "kw"),
             "set by " + _field(s, "site.import_who", "text")),
        card("Mode", _field(s, "site.mode", "badge"), "serving " + _field(s, "site.serving", "text")),
        card("Comms",
             "".join(f'<div class="link">{label} {_field(s, "comms." + key, "badge")}</div>'
                     for key, label in (("ieso", "IESO"), ("ldc", "LDC"), ("broker", "Broker"))),
             "devices " + _field(s, "comms.devices", "text")),
    ])
    title = html.escape(f"{s['site_id']} — der-gateway")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title><style>{_CSS}</style></head>
<body>
<header><h1>{html.escape(s["name"] or s["site_id"])}</h1>
<span class="sub">site {html.escape(s["site_id"])} · resource {html.escape(s["resource_id"])} ·
der-gateway {html.escape(s["version"])} · updated {_field(s, "at", "time")}</span>
<div id="banner" hidden></div></header>
<main>
<section class="cards">{cards}</section>
<section><h2>PCC against the limits and the target</h2>
<div class="legend"><span class="l-pcc">PCC</span><span class="l-target">target</span>
<span class="l-export">export limit</span><span class="l-import">import limit (as −kW)</span>
<span id="chart-caption"></span></div>
<canvas id="chart" height="280"></canvas></section>
<section><h2>Alarms</h2>{_table(s, "alarms", ALARM_COLUMNS, "no alarms")}</section>
<section><h2>Instructions</h2>{_table(s, "instructions", INSTRUCTION_COLUMNS, "no instructions")}</section>
<section><h2>Devices</h2>{_table(s, "devices", DEVICE_COLUMNS, "no devices")}</section>
</main>
<script>const POLL_MS = {POLL_MS}; const TONES = {_script_json(TONES)};
const FIRST_HISTORY = {_script_json(s["history"])};
{_SCRIPT}</script>
</body></html>
"""


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 20px}header h1{margin:0;font-size:20px}
.sub{color:#b8bfcc;font-size:12px}main{padding:12px 20px}h2{font-size:15px;margin:18px 0 6px}
#banner{background:#b3261e;color:#fff;padding:6px 10px;margin-top:8px;border-radius:4px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:10px}
.card{background:#fff;border-radius:6px;padding:10px 12px;box-shadow:0 1px 2px #0002}
.card h3{margin:0;font-size:12px;text-transform:uppercase;color:#5b6475;letter-spacing:.04em}
.card .big{font-size:24px;font-weight:600;margin:4px 0}.card p{margin:0;font-size:12px;color:#5b6475}
.link{font-size:14px;font-weight:400}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e6ea;font-size:13px}
th{background:#eceef2;font-weight:600}td.empty{color:#8a93a3}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#dde1e7}
.t-good{background:#c9ecd2;color:#14532d}.t-bad{background:#f7c6c2;color:#7f1d1d}
.t-warn{background:#fbe3b0;color:#713f12}.t-override{background:#e2d4f7;color:#4c1d95}
tr[data-state=offline] td,tr[data-state=stale] td{color:#8a93a3}
canvas{width:100%;height:280px;display:block;background:#fff;border-radius:6px;box-shadow:0 1px 2px #0002}
.legend span{margin-right:14px;font-size:12px}.legend span:before{content:"";display:inline-block;
width:18px;height:3px;margin-right:5px;vertical-align:middle;background:var(--c)}
.l-pcc{--c:#1d2330}.l-target{--c:#1f77b4}.l-export{--c:#d62728}.l-import{--c:#ff7f0e}
#chart-caption{color:#8a93a3}#chart-caption:before{display:none!important}
"""

# The page's script: refill the fields and tables from /api/status, keep the last hour of points, draw.
_SCRIPT = r"""
// drawn in this order: the PCC last, on top of a target or limit it sits on
const SERIES = [["export_limit_kw", "#d62728", [6, 4], 1.5], ["import_limit_kw", "#ff7f0e", [6, 4], 1.5],
                ["target_kw", "#1f77b4", [], 1.5], ["pcc_kw", "#1d2330", [], 2]];
const hist = {t: [], pcc_kw: [], target_kw: [], export_limit_kw: [], import_limit_kw: []};
let lastT = 0;

function esc(v) {
  return String(v).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                             "'": "&#x27;"})[c]);
}
function plain(v, f) {
  if (v === null || v === undefined || v === "") return "—";
  if (f === "kw") return v.toFixed(1) + " kW";
  if (f === "pct") return v.toFixed(0) + " %";
  if (f === "time") return new Date(v).toISOString().slice(11, 19) + "Z";
  if (f === "upper") return String(v).toUpperCase();
  return String(v);
}
function fmt(v, f) {
  if (f === "badge" && v !== null && v !== undefined) {
    return `<span class="badge t-${TONES[v] || "none"}">${esc(v)}</span>`;
  }
  return esc(plain(v, f));
}
function get(obj, path) {
  return path.split(".").reduce((o, k) => (o && typeof o === "object") ? o[k] : undefined, obj);
}
function render(s) {
  for (const el of document.querySelectorAll("[data-k]")) {
    el.innerHTML = fmt(get(s, el.dataset.k), el.dataset.f);
  }
  for (const table of document.querySelectorAll("table[data-list]")) {
    const cols = [...table.querySelectorAll("th")].map(th => [th.dataset.col, th.dataset.f]);
    const items = s[table.dataset.list] || [];
    table.tBodies[0].innerHTML = items.length
      ? items.map(it => `<tr data-id="${esc(it.id)}" data-state="${esc(it.state)}">` +
                        cols.map(([c, f]) => `<td>${fmt(it[c], f)}</td>`).join("") + "</tr>").join("")
      : `<tr><td colspan="${cols.length}" class="empty">${esc(table.dataset.empty)}</td></tr>`;
  }
}
function addHistory(h) {
  if (!h || !h.t.length) return;
  for (const k in hist) hist[k].push(...h[k]);
  lastT = hist.t[hist.t.length - 1];
  const keep = hist.t.findIndex(t => t >= lastT - 3600);
  if (keep > 0) for (const k in hist) hist[k].splice(0, keep);
}
function draw() {
  const canvas = document.getElementById("chart");
  const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr); g.clearRect(0, 0, w, h);
  const n = hist.t.length;
  const caption = document.getElementById("chart-caption");
  const secs = n ? lastT - hist.t[0] : 0;
  caption.textContent = !n ? "no points yet"
    : `${n} points over the last ${secs < 120 ? `${Math.round(secs)} s` : `${Math.round(secs / 60)} min`}`;
  if (!n) return;
  const value = (k, i) => k === "import_limit_kw" && hist[k][i] !== null ? -hist[k][i] : hist[k][i];
  const range = keys => {
    let lo = 0, hi = 0;
    for (const k of keys) for (let i = 0; i < n; i++) {
      const v = value(k, i);
      if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
    return [lo, hi];
  };
  // The scale follows PCC, target and export limit; an import limit far below them (a 400 kW cap
  // under a PCC near 100 kW) would squash the PCC into a sliver, so it is then left off the scale.
  let [lo, hi] = range(["pcc_kw", "target_kw", "export_limit_kw"]);
  const importLo = range(["import_limit_kw"])[0];
  if (importLo < lo - (hi - lo)) {
    caption.textContent += ` · import limit at ${importLo.toFixed(0)} kW, off the scale`;
  } else {
    lo = Math.min(lo, importLo);
  }
  const pad = (hi - lo) * 0.08 || 10; lo -= pad; hi += pad;
  // the data fills the width as it grows, up to the hour
  const span = Math.min(3600, Math.max(10, lastT - hist.t[0])), t0 = lastT - span;
  const L = 52, R = 10, T = 8, B = 22;
  const x = t => L + (t - t0) / span * (w - L - R), y = v => T + (hi - v) / (hi - lo) * (h - T - B);
  g.font = "11px system-ui, sans-serif"; g.fillStyle = "#5b6475"; g.strokeStyle = "#e3e6ea"; g.lineWidth = 1;
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / 4)));
  const tick = [1, 2, 5, 10].map(m => m * step).find(s => (hi - lo) / s <= 8);
  for (let v = Math.ceil(lo / tick) * tick; v <= hi; v += tick) {
    g.beginPath(); g.moveTo(L, y(v)); g.lineTo(w - R, y(v)); g.stroke();
    g.fillText(v.toFixed(0), 4, y(v) + 4);
  }
  const every = [2, 5, 10, 30, 60, 120, 300, 600].find(s => span / s <= 7);
  for (let s = 0; s <= span; s += every) {
    const label = s === 0 ? "now" : s < 60 ? `−${s} s` : `−${s / 60} min`;
    g.fillText(label, Math.max(L, x(lastT - s) - 16), h - 6);
  }
  g.save(); g.beginPath(); g.rect(L, T, w - L - R, h - T - B); g.clip();
  for (const [k, color, dash, width] of SERIES) {
    g.strokeStyle = color; g.setLineDash(dash); g.lineWidth = width; g.beginPath();
    let pen = false;
    for (let i = 0; i < n; i++) {
      const v = value(k, i);
      if (v === null || hist.t[i] < t0) { pen = false; continue; }
      pen ? g.lineTo(x(hist.t[i]), y(v)) : g.moveTo(x(hist.t[i]), y(v));
      pen = true;
    }
    g.stroke();
  }
  g.restore();
}
async function poll() {
  const banner = document.getElementById("banner");
  try {
    // a gateway that accepts but never answers counts as unreachable too
    const r = await fetch(`/api/status?since=${lastT}`,
                          {cache: "no-store", signal: AbortSignal.timeout(5000)});
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const s = await r.json();
    render(s); addHistory(s.history); draw();
    banner.hidden = true;
  } catch (e) {
    if (banner.hidden) {
      const since = new Date().toISOString().slice(11, 19);
      banner.textContent = `Cannot reach the gateway since ${since}Z (${e.message}): values are old.`;
    }
    banner.hidden = false;
  }
  setTimeout(poll, POLL_MS);
}
addHistory(FIRST_HISTORY); draw(); poll();
window.addEventListener("resize", draw);
"""
