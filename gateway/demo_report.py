"""The demo's report: a plot of the metered PCC power against the limits and the target, over the whole
scenario, with each step marked and named. Drawn from what the scenario player saw on MQTT (the
gateway's telemetry), so it shows what the market side and the LDC were told, not the gateway's inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulators.upstream import Step


@dataclass
class Timeline:
    """The scenario player's hooks (`on_step`, `on_telemetry`) collect into this."""

    steps: list[tuple[datetime, str]] = field(default_factory=list)  # (start, "n. name")
    telemetry: list[dict[str, Any]] = field(default_factory=list)

    def on_step(self, n: int, step: Step, t0: datetime) -> None:
        self.steps.append((t0, f"{n}. {step.name}"))

    def on_telemetry(self, body: dict[str, Any]) -> None:
        self.telemetry.append(body)

    def series(self) -> dict[str, list[float]]:
        """Seconds from the first step's start (`t`), and per series kW (NaN where unknown: a gap)."""
        t0 = self.steps[0][0] if self.steps else None
        out: dict[str, list[float]] = {k: [] for k in ("t", "pcc_kw", "target_kw", "export_kw", "import_kw")}
        for body in self.telemetry:
            at = datetime.fromisoformat(body["at"])
            eff = body["effective"]
            p = body["site"]["p_kw"]
            out["t"].append((at - (t0 or at)).total_seconds())
            out["pcc_kw"].append(math.nan if p is None else p)
            out["target_kw"].append(eff["target_kw"])
            out["export_kw"].append(eff["export_limit_kw"])
            out["import_kw"].append(-eff["import_limit_kw"])
        return out

    def step_starts(self) -> list[float]:
        return [(t - self.steps[0][0]).total_seconds() for t, _ in self.steps]


def write_report(timeline: Timeline, path: Path, title: str) -> Path:
    # A Figure of its own, no pyplot: no global state, no display needed.
    from matplotlib.figure import Figure

    s = timeline.series()
    names = [_short(name) for _, name in timeline.steps]
    rows = (len(names) + 1) // 2  # the steps' names, in two columns under the plot
    fig = Figure(figsize=(12, 6 + 0.2 * rows), dpi=100, layout="constrained")
    plot, notes = fig.subplots(2, 1, height_ratios=[5, 0.5 + 0.2 * rows])
    plot.plot(s["t"], s["export_kw"], color="#d62728", ls="--", lw=1.5, label="export limit")
    plot.plot(s["t"], s["import_kw"], color="#ff7f0e", ls="--", lw=1.5, label="import limit (as −kW)")
    plot.plot(s["t"], s["target_kw"], color="#1f77b4", lw=1.5, label="target")
    plot.plot(s["t"], s["pcc_kw"], color="#1d2330", lw=2, label="PCC (metered, + = export)")
    for start, name in zip(timeline.step_starts(), names, strict=True):
        plot.axvline(start, color="#8a93a3", lw=0.8, ls=":")
        plot.annotate(name.split(".")[0], (start, 1.0), xycoords=("data", "axes fraction"),
                      xytext=(3, -12), textcoords="offset points", color="#5b6475", fontsize=9)
    plot.axhline(0, color="#8a93a3", lw=0.6)
    plot.set_xlabel("seconds from the start of the scenario (dotted: a step starts)")
    plot.set_ylabel("kW at the PCC")
    plot.set_title(title, loc="left")
    plot.grid(alpha=0.3)
    notes.axis("off")
    notes.legend(*plot.get_legend_handles_labels(), loc="upper left", ncols=4, fontsize=9, frameon=False)
    below_legend = 1 - 0.4 / (0.5 + 0.2 * rows)  # axes fraction: the legend takes ~0.4 in at the top
    for col, chunk in enumerate((names[:rows], names[rows:])):
        notes.text(0.5 * col, below_legend, "\n".join(chunk), va="top", fontsize=9,
                   transform=notes.transAxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _short(name: str, width: int = 78) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
