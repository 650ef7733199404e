"""The wire schema of PROTOCOL.md (pydantic models), its JSON Schema export, and the codec between the
wire and the core."""
