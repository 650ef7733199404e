"""The over-MQTT fuzz sample runs on the integration rig of tests/gateway (mosquitto, simulators, gateway)."""

from tests.gateway.conftest import broker, make_rig  # noqa: F401  (fixtures, shared rather than copied)
