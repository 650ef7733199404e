"""The decision core: pure logic, no I/O, no asyncio, no clock reads (PROTOCOL §5–§7).

Modules: model (domain types), outbound (what the gateway says), instructions (store and seen ids),
validation (semantic checks), limits (merge with sources), arbitration (served target and what can be
delivered), allocation (closed loop and split to devices), comms (link supervision), availability
(TDC-13 windows), report (telemetry content), serde (state ⇄ JSON), engine (the facade).
"""
