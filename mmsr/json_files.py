"""The JSON files mmsr writes beside its outputs (a run's config.json and run.json, a study's
per-run study.json and origin.json), read back with one error for a damaged one: the file, where
it breaks, and what remakes it, not a JSONDecodeError traceback."""

from __future__ import annotations

import json
from pathlib import Path

from mmsr.errors import MMSRError


def read_json_object(path: Path, *, remake: str, keys: tuple[str, ...] = ()) -> dict:
    """The JSON object in `path`, with `keys` present. `remake`: the hint for a damaged file (how
    to get it back)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise MMSRError(f"damaged: not UTF-8 text (byte {error.start})", where=path, hint=remake) from None
    except json.JSONDecodeError as error:
        where = "empty" if not error.doc.strip() else f"not JSON at line {error.lineno}, column {error.colno} ({error.msg})"
        raise MMSRError(f"damaged: {where}", where=path, hint=remake) from None
    if not isinstance(value, dict):
        raise MMSRError(f"damaged: holds a JSON {type(value).__name__}, not an object", where=path, hint=remake)
    missing = [key for key in keys if key not in value]
    if missing:
        raise MMSRError(f"damaged: no {', '.join(map(repr, missing))}", where=path, hint=remake)
    return value
