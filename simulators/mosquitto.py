"""A real mosquitto broker on a free loopback port (tests, benchmarks), stopped and restarted at will.

With `tls_dir` (certificates made by scripts/make-test-ca.sh) it runs the shipped production
configuration, examples/mosquitto/mosquitto.conf with its ACL, so that tests exercise exactly what a
deployment runs: only the certificate paths, the port and the logging are changed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path

_handed_out: set[int] = set()

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "mosquitto"
# keys of the example configuration that are replaced here: the deployment's places are not the test's
_CERT_KEYS = ("cafile", "certfile", "keyfile", "crlfile")
_DROPPED_KEYS = ("persistence", "persistence_location", "log_dest", "log_type", "connection_messages", "user")


# Ports handed out come from below the kernel's range for outgoing connections (32768 and up on Linux), so
# that no client socket is given one between here and the bind, and from a band of their own per process
# of a parallel test run (pytest-xdist's PYTEST_XDIST_WORKER=gwN), so that no two processes hand out the
# same port.
PORT_LOW, PORT_HIGH, PORT_BANDS = 10000, 32000, 8


def _band() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    n = int(worker) % PORT_BANDS if worker.isdigit() else 0
    size = (PORT_HIGH - PORT_LOW) // PORT_BANDS
    return range(PORT_LOW + n * size, PORT_LOW + (n + 1) * size)


def free_port(avoid: Collection[int | None] = ()) -> int:
    """A loopback port nobody listens on now, never the same twice in one process, and none of `avoid`
    (ports already given out elsewhere but not bound yet, e.g. those a site file names)."""
    for port in _band():
        if port in _handed_out or port in avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port left in {_band()}")


def mosquitto_binary() -> str:
    # Debian puts it in /usr/sbin, which is not on a non-root PATH.
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if not found:
        raise RuntimeError("mosquitto is not installed: `make test` installs it (or apt-get it)")
    return found


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None, persistence: bool = False,
                 tls_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.tls = tls_dir is not None
        self.proc: subprocess.Popen | None = None
        self.conf = workdir / "mosquitto.conf"
        if tls_dir is not None:
            lines = _example_conf(tls_dir, self.port)
        else:
            lines = [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                # mosquitto's default queue limit silently drops QoS 1 messages to a slow subscriber.
                "max_queued_messages 100000",
                # Without it a response that follows a PUBACK on the same socket waits ~40 ms (Nagle
                # against the receiver's delayed ACK): receipt latency would measure TCP, not the gateway.
                "set_tcp_nodelay true",
            ]
        lines.append(f"log_dest file {workdir / 'mosquitto.log'}")
        # persistence keeps sessions and queued QoS 1 messages across a stop and a start
        if persistence:
            lines += ["persistence true", f"persistence_location {workdir}/"]
        else:
            lines.append("persistence false")
        # As root, mosquitto would drop to user `mosquitto`, which cannot write the test's temp dir.
        if os.geteuid() == 0:
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; see {self.workdir}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _example_conf(tls_dir: Path, port: int) -> list[str]:
    """examples/mosquitto/mosquitto.conf for a test: certificates from `tls_dir`, the example ACL, the
    TLS listener on loopback `port`; persistence, logging and the run-as user are the caller's."""
    lines = []
    for line in (EXAMPLE_DIR / "mosquitto.conf").read_text().splitlines():
        key, _, value = line.strip().partition(" ")
        if not key or key.startswith("#") or key in _DROPPED_KEYS:
            continue
        if key == "listener":
            line = f"listener {port} 127.0.0.1"
        elif key in _CERT_KEYS:
            line = f"{key} {tls_dir / Path(value).name}"
        elif key == "acl_file":
            line = f"acl_file {EXAMPLE_DIR / Path(value).name}"
        lines.append(line)
    return lines
