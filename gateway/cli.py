"""`der-gateway` command line: run | demo | simulate | check-config | schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.config import SiteFileError, load_site

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_SITE = EXAMPLES / "site.toml"


def _cmd_check_config(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    print(f"{args.site}: OK — site {site.site.id}, {len(site.devices)} devices "
          f"({', '.join(f'{d.id}:{d.kind}' for d in site.devices)})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gateway.app import Gateway

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(Gateway(load_site(args.site), args.broker).run())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo

    return demo(load_site(args.site), Path(args.scenario), args.broker)


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
        print(f"{path}: audit log intact, {result.records} records")
        return 0
    print(f"{path}: audit log BROKEN at record {result.records}: {result.problem}")
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
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("demo", help="simulated site + gateway + a T-D coordination scenario, in one process")
    s.add_argument("--site", default=str(EXAMPLE_SITE), help="site file (TOML)")
    s.add_argument("--scenario", default=str(EXAMPLES / "demo_scenario.toml"), help="scenario file (TOML)")
    s.add_argument("--broker", help="use this broker (mqtt://HOST:PORT) instead of an embedded one")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("simulate", help="serve the site's simulated devices on their Modbus ports")
    s.add_argument("--site", default=str(EXAMPLE_SITE), help="site file (TOML)")
    s.add_argument("--quiet", action="store_true", help="do not print the live table")
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("check-config", help="validate a site file")
    s.add_argument("site", help="site file (TOML)")
    s.set_defaults(func=_cmd_check_config)

    s = sub.add_parser("audit", help="the audit log")
    audit = s.add_subparsers(dest="audit_command", required=True)
    v = audit.add_parser("verify", help="check the hash chain; name the first broken record")
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
