"""DNP3 stays optional: a site without [scada] and without dnp3 devices runs where opendnp3 (yadnp3, x86-64
wheels only) is missing, and a site that needs it says what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["opendnp3"] = None  # as on a machine without the binding: importing it fails
    from gateway.app import Gateway
    from simulators.example_site import example_site

    site = example_site()
    site.scada.enabled = False
    site.devices = [d for d in site.devices if d.protocol != "dnp3"]
    Gateway(site)
    assert "gateway.dnp3.opendnp3_stack" not in sys.modules
    site.scada.enabled = True
    try:
        Gateway(site)
    except ImportError as err:
        print(err)
""")


def test_a_site_without_dnp3_runs_without_the_opendnp3_binding() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install yadnp3" in out.stdout
