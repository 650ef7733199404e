"""DNP3 (IEEE 1815) for the gateway: `opendnp3_stack` is the one module that imports opendnp3 (yadnp3).

Nothing imports this package unless the site uses DNP3 (a `[scada]` section or a device with
`protocol = "dnp3"`), so a site without DNP3 runs where the binding is not installed.
"""
