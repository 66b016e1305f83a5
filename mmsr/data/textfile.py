"""Reading text tables line by line, naming the file and line of any problem.

Shared by the canonical dataset's reader and the importers.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

from mmsr.errors import MMSRError
from mmsr.progress import Advance


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_lines(path: Path, advance: Advance | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text without the line break) for every line; non-UTF-8 bytes name the line.

    `advance` is called with the kilobytes read (progress by size, so the total is known).
    `.gz` files are read through gzip (then progress counts uncompressed bytes).
    """
    for number, text, _ in iter_lines_at(path, advance):
        yield number, text


def iter_lines_at(path: Path, advance: Advance | None = None) -> Iterator[tuple[int, str, tuple[int, int]]]:
    """`iter_lines` with each line's byte span (start after a byte-order mark, end after the line
    break), for readers that come back to a line later (`mmsr.data.item_table`). In a `.gz`
    file the offsets are the uncompressed stream's."""
    path = Path(path)
    offset = number = 0
    # What the consumer raises at a `yield` never comes back in here: the except below sees only
    # the file's reading. gzip's EOFError would otherwise reach click, which takes it for Ctrl-D.
    try:
        with _open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                start, offset = offset, offset + len(raw)
                if advance is not None:
                    advance(len(raw) / 1024)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise MMSRError(f"not UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})",
                                    where=f"{path}:{number}", hint="re-encode the file as UTF-8") from None
                if number == 1 and text.startswith("\ufeff"):  # a byte-order mark from spreadsheet exports
                    text, start = text[1:], start + len("\ufeff".encode("utf-8"))
                yield number, text.rstrip("\r\n"), (start, offset)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise MMSRError(f"not a whole gzip file ({type(error).__name__}: {error}) after {number:,} lines",
                        where=path, hint="copy it again, or give the uncompressed file (without .gz)") from None


def iter_json_lines(path: Path, advance: Advance | None = None) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for every non-blank line of a JSON-lines file."""
    for where, record, _ in iter_json_lines_at(path, advance):
        yield where, record


def iter_json_lines_at(path: Path, advance: Advance | None = None) -> Iterator[tuple[str, dict, tuple[int, int]]]:
    """`iter_json_lines` with each record's byte span in the file (start, end)."""
    for number, line, span in iter_lines_at(path, advance):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise MMSRError(f"malformed JSON: {error.msg} (column {error.colno})", where=where) from None
        if not isinstance(record, dict):
            raise MMSRError("expected one JSON object per line", where=where)
        yield where, record, span
