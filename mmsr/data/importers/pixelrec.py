"""`pixelrec`: PixelRec and MicroLens (Westlake University).

    interactions CSV   a header with user, item and (optionally) timestamp columns
                       e.g. `item_id,user_id,timestamp` (PixelRec) or `user,item,timestamp` (MicroLens)
    item text CSV      a header with an item column and a title column, e.g. `item_id,...,title,tag,description`
                       (PixelRec item_info) or `item,title` (MicroLens titles)
    COVERS/            cover pictures named by item id: ITEM.jpg|jpeg|png|webp

Files are told apart by their headers, so they can be given in any order; comma- or
tab-separated. Column names are matched case-insensitively:

    user: user_id, user, userid, uid          item: item_id, item, itemid, iid, video_id, videoid
    timestamp: timestamp, time, ts            title: title, title_en, name
    description: description, desc, summary   category: tag, tags, category, categories

Without a timestamp column, line order is time order. Items that no interaction names are
skipped (PixelRec's item table covers every subset). A missing cover follows --on-bad-image;
without a covers folder the dataset is text-only.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mmsr.data.dataset import DatasetWriter
from mmsr.data.importers.base import (ImportReport, ProgressFactory, bad_image, find_picture, iter_lines, parse_time,
                                      register, require_dir, require_file, size_kb)
from mmsr.errors import MMSRError

USER = ("user_id", "user", "userid", "uid")
ITEM = ("item_id", "item", "itemid", "iid", "video_id", "videoid")
TIME = ("timestamp", "time", "ts")
TITLE = ("title", "title_en", "name")
DESCRIPTION = ("description", "desc", "summary")
CATEGORY = ("tag", "tags", "category", "categories")


class _Table:
    """A CSV read line by line; `rows()` yields (line number, cells) with the count checked."""

    def __init__(self, path: Path):
        self.path = require_file(path, "CSV file")
        lines = iter_lines(path)
        first = next(lines, None)
        lines.close()
        if first is None or not first[1].strip():
            raise MMSRError("no header line", where=f"{path}:1")
        self.delimiter = "\t" if "\t" in first[1] else ","
        self.header = [cell.strip().lower() for cell in next(csv.reader([first[1]], delimiter=self.delimiter))]

    def column(self, names: tuple[str, ...], what: str, *, required: bool = True) -> int | None:
        for name in names:
            if name in self.header:
                return self.header.index(name)
        if required:
            raise MMSRError(f"no {what} column in the header (found: {', '.join(self.header)})",
                            where=f"{self.path}:1", hint=f"name it one of: {', '.join(names)}")
        return None

    def rows(self, advance=None):
        numbers = [0]

        def text_lines():
            for number, line in iter_lines(self.path, advance):
                numbers[0] = number
                if number > 1:
                    yield line + "\n"  # iter_lines strips it; a quoted field over two lines keeps it

        width = len(self.header)
        # strict: a quote left open (a file cut short inside a quoted field) is an error, not a
        # field that swallows every line after it.
        reader = csv.reader(text_lines(), delimiter=self.delimiter, strict=True)
        start = 2  # the line the next record starts on
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise MMSRError(f"cannot read the record that starts on this line ({error})",
                                where=f"{self.path}:{start}",
                                hint='a field that opens a quote must close it ("" stands for a quote inside '
                                     "it); if the file was cut short, copy it again") from None
            start = numbers[0] + 1
            if not cells or not any(cell.strip() for cell in cells):
                continue
            where = f"{self.path}:{numbers[0]}"
            if len(cells) != width:
                raise MMSRError(f"expected {width} fields, found {len(cells)}", where=where,
                                hint="quote fields that contain the separator")
            yield where, cells


def _classify(sources: list[Path]) -> tuple[_Table, _Table, Path | None]:
    inters: list[_Table] = []
    items: list[_Table] = []
    folders: list[Path] = []
    for source in sources:
        if source.is_dir():
            folders.append(source)
            continue
        table = _Table(source)
        if any(name in table.header for name in USER):
            inters.append(table)
        elif any(name in table.header for name in TITLE):
            items.append(table)
        else:
            raise MMSRError(f"header has neither a user nor a title column ({', '.join(table.header)})",
                            where=f"{source}:1", hint="expected an interactions CSV or an item text CSV")
    for kind, found in (("interactions CSV (user, item, timestamp)", inters), ("item text CSV (item, title)", items)):
        if len(found) != 1:
            raise MMSRError(f"pixelrec: expected one {kind}, found {len(found)}",
                            where=", ".join(str(t.path) for t in found) or ", ".join(map(str, sources)))
    if len(folders) > 1:
        raise MMSRError("pixelrec: more than one covers folder", where=", ".join(map(str, folders)))
    return inters[0], items[0], folders[0] if folders else None


@register("pixelrec", help="PixelRec / MicroLens: interactions CSV (user, item, timestamp), item text CSV "
                           "(item, title, ...) and a folder of covers named by item id (optional).")
def import_pixelrec(sources: list[Path], writer: DatasetWriter, report: ImportReport,
                    progress: ProgressFactory) -> None:
    inters, items, covers = _classify(sources)
    writer.items_path = items.path
    if covers is None:
        report.notes.append("no covers folder given: the dataset has no images")
    else:
        require_dir(covers, "covers folder")
    user_col = inters.column(USER, "user")
    item_col = inters.column(ITEM, "item")
    time_col = inters.column(TIME, "timestamp", required=False)
    if time_col is None:
        report.notes.append(f"{inters.path}: no timestamp column; line order is time order")

    used: set[str] = set()
    with progress("interactions (scan)", size_kb(inters.path)) as advance:
        for where, cells in inters.rows(advance):
            if time_col is not None:
                parse_time(cells[time_col].strip(), where)
            used.add(cells[item_col].strip())

    id_col = items.column(ITEM, "item")
    title_col = items.column(TITLE, "title")
    desc_col = items.column(DESCRIPTION, "description", required=False)
    cat_col = items.column(CATEGORY, "category", required=False)
    skipped = 0
    with progress("items", size_kb(items.path)) as advance:
        for where, cells in items.rows(advance):
            item = cells[id_col].strip()
            if item not in used:
                skipped += 1
                continue
            image = None
            if covers is not None:
                image = find_picture(covers, [item])
                if image is None:
                    image = bad_image(writer, f"no cover for item {item!r} in {covers}", where,
                                      hint=f"add {covers}/{item}.jpg, or use --on-bad-image skip|placeholder")
            writer.add_item(item, title=cells[title_col],
                            description=cells[desc_col] if desc_col is not None else "",
                            category=cells[cat_col] if cat_col is not None else "", image=image, where=where)
    if skipped:
        report.notes.append(f"{skipped:,} items of {items.path.name} have no interaction: skipped")

    with progress("interactions", size_kb(inters.path)) as advance:
        for number, (where, cells) in enumerate(inters.rows(advance), start=1):
            stamp = float(number) if time_col is None else parse_time(cells[time_col].strip(), where)
            writer.add_interaction(cells[user_col], cells[item_col], stamp, where=where)
