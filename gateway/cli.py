"""`der-gateway` command line: run | status | demo | simulate | check-config | audit | schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from gateway.config import SiteFileError, load_site
from gateway.logging_setup import FORMATS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_SITE = EXAMPLES / "site.toml"
DEFAULT_STATUS_URL = "http://127.0.0.1:8080"


def _cmd_check_config(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    print(f"{args.site}: valid — site {site.site.id}, {len(site.devices)} devices "
          f"({', '.join(f'{d.id}:{d.kind}' for d in site.devices)})")
    if args.no_probe:
        return 0

    from gateway.probe import probe_site

    probes = asyncio.run(probe_site(site))
    for probe in probes:
        print(f"  {'ok  ' if probe.ok else 'FAIL'}  {probe.text}")
    failed = sum(not p.ok for p in probes)
    if failed:
        print(f"{failed} of {len(probes)} devices cannot be used as configured: see FAIL above")
        return 1
    print(f"all {len(probes)} devices answer")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import logging

    from gateway import __version__
    from gateway.app import Gateway
    from gateway.logging_setup import configure

    configure(args.log_level, args.log_format)
    site = load_site(args.site)
    logging.getLogger("gateway").info("der-gateway %s starting: site %s, %d devices, broker %s",
                                      __version__, site.site.id, len(site.devices),
                                      args.broker or site.mqtt.broker)
    gateway = Gateway(site, args.broker)
    gateway.services.append(lambda: _collect_garbage_after(gateway.started_up))
    asyncio.run(gateway.run())
    return 0


GC_EVERY_S = 60.0


async def _collect_garbage_after(started_up: asyncio.Event) -> None:
    """The gateway process's cycle collector, once start-up is over: a full collection a minute instead
    of the automatic ones. Each automatic collection stops the loop, and every instruction waiting for
    its answer, for as long as it takes; at a thousand devices the young objects of a second of Modbus
    traffic took 40-80 ms to go through (measured), and the default thresholds had the collector run 70
    times a second and take 15 % of the gateway's time. Memory is freed by reference counting; what
    only the collector frees (cycles: an exception and its traceback, mostly) is little, a minute of it
    at most. What exists at start-up (profiles, connections, the store) lives as long as the process:
    frozen out of the collector's sight, it does not lengthen the minute's collection."""
    import gc

    await started_up.wait()
    gc.freeze()
    gc.disable()
    while True:
        await asyncio.sleep(GC_EVERY_S)
        gc.collect()


def _cmd_status(args: argparse.Namespace) -> int:
    from gateway.web.console import show_status

    url = args.url
    if url is None and args.site:
        web = load_site(args.site).web
        if not web.enabled:
            print(f"error: {args.site}: [web] is not enabled (set enabled = true and restart the gateway)",
                  file=sys.stderr)
            return 1
        host = "127.0.0.1" if web.host in ("0.0.0.0", "::") else web.host  # listening on all: ask loopback
        url = f"http://{host}:{web.port}"
    return show_status(url or DEFAULT_STATUS_URL)


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo

    return demo(load_site(args.site), Path(args.scenario), args.broker, Path(args.report))


def _cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.run import run_simulate

    return run_simulate(load_site(args.site), live=not args.quiet)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from gateway.store.audit import verify
    from gateway.store.db import open_db

    path = Path(args.db) if args.db else load_site(args.site).store.path
    if not path.exists():
        print(f"error: {path}: no such store (check [store] path in the site file)", file=sys.stderr)
        return 2
    result = verify(open_db(path))
    if result.ok:
        print(f"{path}: audit log intact: {result.records} records verified in {result.segments} sealed "
              f"segment(s) and the open one; {result.start}")
        return 0
    print(f"{path}: audit log BROKEN: {result.problem}\n  ({result.records} records verified intact before "
          f"it; {result.start})")
    return 1


def _cmd_schema(args: argparse.Namespace) -> int:
    from gateway.protocol.schema import json_schema

    text = json.dumps(json_schema(), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="der-gateway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run the gateway for a site")
    s.add_argument("--site", required=True, help="site file (TOML)")
    s.add_argument("--broker", help="mqtt://HOST:PORT (overrides the site file)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", choices=FORMATS,
                   help="log lines on stdout: json or text (default: json under systemd, else text)")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("status", help="what the running gateway is doing (its local web API)")
    s.add_argument("--url", help=f"the gateway's page (default: from --site, else {DEFAULT_STATUS_URL})")
    s.add_argument("--site", help="site file: its [web] host and port give the URL")
    s.set_defaults(func=_cmd_status)

    s = sub.add_parser("demo", help="simulated site + gateway + a T-D coordination scenario, in one process")
    s.add_argument("--site", default=str(EXAMPLE_SITE), help="site file (TOML)")
    s.add_argument("--scenario", default=str(EXAMPLES / "demo_scenario.toml"), help="scenario file (TOML)")
    s.add_argument("--broker", help="use this broker (mqtt://HOST:PORT) instead of an embedded one")
    s.add_argument("--report", default="demo-report.png", help="where to write the plot of the run (PNG)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("simulate", help="serve the site's simulated devices on their Modbus ports")
    s.add_argument("--site", default=str(EXAMPLE_SITE), help="site file (TOML)")
    s.add_argument("--quiet", action="store_true", help="do not print the live table")
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("check-config", help="validate a site file and probe every device it names")
    s.add_argument("site", help="site file (TOML)")
    s.add_argument("--no-probe", action="store_true", help="only validate the file; reach no device")
    s.set_defaults(func=_cmd_check_config)

    s = sub.add_parser("audit", help="the audit log")
    audit = s.add_subparsers(dest="audit_command", required=True)
    v = audit.add_parser("verify", help="check the hash chain across every audit segment; name the first "
                                                "broken record")
    where = v.add_mutually_exclusive_group(required=True)
    where.add_argument("--site", help="site file (its [store] path)")
    where.add_argument("--db", help="the gateway's SQLite file")
    v.set_defaults(func=_cmd_audit_verify)

    s = sub.add_parser("schema", help="print the JSON Schema of the T-D coordination protocol")
    s.add_argument("--out", help="write to this file instead of stdout")
    s.set_defaults(func=_cmd_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SiteFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
