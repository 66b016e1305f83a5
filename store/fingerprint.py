"""Fingerprints: the JSON dict that says which inputs produced a modality's cached states.

It holds the encoder's identity (model name, weights hash, split layer, tokenizer and max
length or image transform), the dtype and the item list hash. Two fingerprints match when
their canonical JSON forms are equal; `diff` names the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> Any:
    """The JSON form a fingerprint is compared in: tuples become lists, keys are strings."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_default))


def _default(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"fingerprint values must be JSON data, got {type(value).__name__}: {value!r}")


def digest(obj: Any, length: int = 64) -> str:
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def diff(stored: dict, expected: dict, prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ (or exist on one side only)."""
    stored, expected = canonical(stored), canonical(expected)
    keys: list[str] = []
    for key in sorted(set(stored) | set(expected)):
        name = f"{prefix}{key}"
        if key not in stored:
            keys.append(f"{name} (not in the cache)")
        elif key not in expected:
            keys.append(f"{name} (only in the cache)")
        elif isinstance(stored[key], dict) and isinstance(expected[key], dict):
            keys.extend(diff(stored[key], expected[key], prefix=f"{name}."))
        elif stored[key] != expected[key]:
            keys.append(f"{name}: cache has {_short(stored[key])}, expected {_short(expected[key])}")
    return keys


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def items_hash(item_ids) -> str:
    """sha256 over the ids, one per line (the same rule as mmsr's dataset item_list_hash)."""
    h = hashlib.sha256()
    for item_id in item_ids:
        h.update(item_id.encode("utf-8") + b"\n")
    return h.hexdigest()
