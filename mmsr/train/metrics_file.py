"""A run's `metrics.jsonl`: one JSON record per finished epoch, appended by the trainer and read
by resume, studies and plots through these three functions.

    append_record(path, record)           # each finished epoch, before its checkpoint
    note = reconcile(path, epoch)         # on every resume: the file as of the checkpoint
    records = read_records(path)          # a broken line is named, never skipped

The trainer appends the record before it writes the epoch's `last.pt`: a command killed between
the two leaves a record past the checkpoint, which the resume drops and writes again, rather than
a checkpoint whose epoch has no record (lost for good). A command killed inside an append leaves
a last line cut short; the resume drops it too, so the next append never lands on its end.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmsr.atomic import atomic_write_text
from mmsr.errors import MMSRError


def append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[dict]:
    """The records, oldest first ([] when the file does not exist); a line that is not one
    epoch's record is refused, naming it."""
    if not path.is_file():
        return []
    lines = _lines(path)
    return [_record(line, f"{path}:{number}") for number, line in lines]


def reconcile(path: Path, epoch: int) -> str | None:
    """Make the file what it was when the checkpoint of `epoch` (epochs finished) was taken: the
    records up to it, each on its own line. A last line cut short (a command killed while
    appending it) is dropped; a broken line before it is refused, naming it. Returns a note of
    what was dropped, or None."""
    if not path.is_file():
        return None
    lines = _lines(path)
    cut = None
    if lines and not path.read_bytes().endswith(b"\n"):
        *lines, (number, _) = lines
        cut = number
    records = [_record(line, f"{path}:{number}") for number, line in lines]
    kept = [record for record in records if record["epoch"] <= epoch]
    if cut is None and len(kept) == len(records):
        return None
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
    dropped = [f"line {cut}, cut short" if cut is not None else "",
               f"{len(records) - len(kept)} record(s) after epoch {epoch}" if len(kept) < len(records) else ""]
    note = f"{path}: dropped " + " and ".join(part for part in dropped if part) + " (written again as the run goes on)"
    missing = sorted(set(range(1, epoch + 1)) - {record["epoch"] for record in kept})
    if missing:  # the checkpoint is past them: they are not trained again
        note += f"; epoch(s) {', '.join(map(str, missing))} keep their checkpoint but have no record"
    return note


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MMSRError(f"not UTF-8 text (byte {error.start})", where=path,
                        hint="each line is one epoch's JSON object, as `mmsr train` writes it") from None
    return [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise MMSRError(f"not JSON ({error.msg})", where=where, hint="each line is one epoch's JSON object") from None
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
        raise MMSRError("a record without an integer epoch", where=where,
                        hint="each line is one epoch's JSON object, as `mmsr train` writes it")
    if not isinstance(record.get("valid", {}), dict):  # every reader takes it as {metric: value}
        raise MMSRError(f"a record whose valid is {record['valid']!r}, not a mapping of metrics", where=where,
                        hint="each line is one epoch's JSON object, as `mmsr train` writes it: drop the key or the line")
    return record
