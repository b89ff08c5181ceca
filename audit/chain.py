"""The hash chain: one canonical serialization of an entry, and the walk that verifies it.

``hash = sha256(canonical JSON of the entry's fields + prev_hash)``. Canonical means sorted keys,
no whitespace, UTC timestamps in microseconds and ids as strings, so the same row always gives
the same bytes whichever process wrote or reads it. Changing any field, deleting an entry (its
successor's ``prev_hash`` no longer matches) or dropping the newest ones (the chain head no longer
matches) is found by ``verify``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from audit.constants import GENESIS

HASHED_FIELDS = (
    "id",
    "created_at",
    "actor_id",
    "actor_kind",
    "actor_label",
    "tenant_id",
    "tenant_label",
    "action",
    "target_type",
    "target_id",
    "summary",
    "before",
    "after",
    "ip",
    "user_agent",
    "event_id",
    "prev_hash",
)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if value is None or isinstance(value, str | int | bool | dict | list):
        return value
    return str(value)


def canonical(entry: Any) -> bytes:
    """The bytes hashed for ``entry`` (an ``AuditEntry``, saved or not)."""
    fields = {name: _plain(getattr(entry, name)) for name in HASHED_FIELDS}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(entry: Any) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


@dataclass(frozen=True)
class Problem:
    """The first place the chain breaks: the entry's ``seq`` (None: the head) and why."""

    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = f"entry #{self.seq}" if self.seq is not None else "chain head"
        return f"{where}: {self.reason}"


def verify(
    entries: Iterator[Any], *, head_hash: str | None, cut_hashes: set[str]
) -> tuple[int, Problem | None]:
    """Walk ``entries`` in ``seq`` order; how many were checked, and the first problem or None.

    ``cut_hashes`` are the ``cut_hash`` values of ``audit.pruned`` entries: the oldest remaining
    entry may link to one of them instead of the genesis. ``head_hash`` is what the chain head
    says the newest entry's hash is (None: no head row, an empty trail).
    """
    checked = 0
    previous: Any = None
    for entry in entries:
        if previous is None:
            if entry.prev_hash != GENESIS and entry.prev_hash not in cut_hashes:
                return checked, Problem(
                    entry.seq, "it links to an entry that is missing and no audit.pruned entry covers the cut"
                )
        elif entry.prev_hash != previous.hash:
            return checked, Problem(
                entry.seq,
                f"its prev_hash does not match entry #{previous.seq}: an entry before it was deleted",
            )
        if digest(entry) != entry.hash:
            return checked, Problem(entry.seq, "its contents do not match its hash: the row was changed")
        checked += 1
        previous = entry
    last_hash = previous.hash if previous is not None else GENESIS
    if head_hash is not None and head_hash != last_hash and previous is not None:
        return checked, Problem(None, "the newest entries were deleted (the head names a later hash)")
    if head_hash and previous is None:
        return checked, Problem(None, "every entry was deleted (the head names a hash)")
    return checked, None
