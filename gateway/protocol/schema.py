"""JSON Schema of every T-D coordination protocol message, inbound and outbound (`der-gateway schema`).

One document: `oneOf` the messages, each a `$defs` entry generated from the wire models, so the published
schema cannot drift from what the gateway enforces. Inbound messages are described as validated,
outbound ones as serialised.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.protocol import messages as wire


def json_schema() -> dict[str, Any]:
    inbound = dict.fromkeys(m for by_type in wire.INBOUND.values() for m in by_type.values())
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in inbound]
    models += [(m, "serialization") for m in wire.OUTBOUND]
    _, defs = models_json_schema(models, ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "T-D Coordination Protocol, version 1",
        "description": "Messages on tdc/v1/{site_id}/...: inbound from the market side (ieso) and the LDC "
                       "(ldc), outbound from the gateway. See PROTOCOL.md.",
        "oneOf": [{"$ref": f"#/$defs/{m.__name__}"} for m, _ in models],
        "$defs": defs["$defs"],
    }
