"""The hash chain of the audit log (PROTOCOL §8): what a record's hash covers.

Every record carries the hash of the one before it, and its own hash covers its sequence number, time,
kind, content and that previous hash. So an edited record no longer matches its hash, a removed one
leaves a gap in the sequence and a broken link, and a reordered one breaks the links around it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64  # what the first record links to
KINDS = ("inbound", "decision", "write", "outbound", "event")
COLUMNS = "seq, at, kind, record, prev_hash, hash"


def chain_hash(seq: int, at: str, kind: str, record: str, prev_hash: str) -> str:
    return hashlib.sha256(f"{seq}\x1f{at}\x1f{kind}\x1f{record}\x1f{prev_hash}".encode()).hexdigest()


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
