"""The demo's report: at its end `der-gateway demo` writes a plot of PCC, limits and target over the run,
with the scenario's steps marked, from the telemetry the scenario player saw."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.config import SiteFile
from gateway.demo_report import Timeline, write_report
from simulators.mosquitto import free_port
from simulators.upstream import Step

SCENARIO = """
[[steps]]
name = "IESO dispatch inside all limits"
duration_s = 4
[[steps.send]]
role = "ieso"
type = "dispatch"
id = "disp-r"
product = "energy"
kind = "algorithmic"
target_kw = 150.0
start = 0
end = 900

[[steps]]
name = "LDC envelope below the dispatch"
duration_s = 4
expect = { binding = "envelope:env-r" }
[[steps.send]]
role = "ldc"
type = "envelope"
id = "env-r"
export_limit_kw = 100.0
reason = "thermal"
start = 0
end = 900
"""


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_demo_writes_its_report_and_says_where(make_site: Callable[..., tuple[SiteFile, Path]],
                                                tmp_path: Path) -> None:
    _, site_file = make_site(scada={"port": free_port()})
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    report = tmp_path / "out" / "report.png"
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--site", str(site_file),
                          "--scenario", str(scenario), "--report", str(report)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 of 2 steps met." in run.stdout
    assert run.stdout.rstrip().splitlines()[-1] == f"Report: {report}"
    assert "Status page: http://127.0.0.1:" in run.stdout  # on while the demo runs
    width, height = png_size(report)
    assert width >= 1000 and height >= 600


def test_series_are_measured_from_the_first_step_with_gaps_where_the_meter_was_out(tmp_path: Path) -> None:
    t0 = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    timeline = Timeline()

    def telemetry(s: int, p_kw: float | None, export: float) -> None:
        timeline.on_telemetry({"at": (t0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z"),
                               "site": {"p_kw": p_kw},
                               "effective": {"target_kw": 150.0, "export_limit_kw": export,
                                             "import_limit_kw": 400.0}})

    timeline.on_step(1, Step("dispatch", 10), t0)
    telemetry(1, 140.0, 300.0)
    telemetry(2, None, 300.0)
    timeline.on_step(2, Step("envelope", 10), t0 + timedelta(seconds=10))
    telemetry(11, 99.0, 100.0)
    s = timeline.series()
    assert s["t"] == [1.0, 2.0, 11.0]
    assert s["pcc_kw"][0] == 140.0 and s["pcc_kw"][1] != s["pcc_kw"][1]  # NaN: a gap in the line
    assert s["export_kw"] == [300.0, 300.0, 100.0] and s["import_kw"] == [-400.0] * 3
    assert timeline.step_starts() == [0.0, 10.0]
    assert [name for _, name in timeline.steps] == ["1. dispatch", "2. envelope"]
    assert png_size(write_report(timeline, tmp_path / "r.png", "test")) == (1200, 620)
