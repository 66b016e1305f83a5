"""`recbole`: RecBole atomic files.

    NAME.inter   user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float ...
    NAME.item    item_id:token<TAB>movie_title:token_seq<TAB>release_year:token<TAB>class:token_seq ...

Every header field is `name:type` (token, token_seq, float, float_seq). Text fields come from
the `.item` file:

- title: the field `title`, or one whose name ends in `title` (`movie_title`), or `name`;
- category: `categories`, `category`, `genres`, `genre`, `class`, `tags` or `tag`
  (token_seq values joined with ", ");
- description: `description` / `desc` if present, then every other token / token_seq field
  as `name: value` (ml-100k: "release year: 1995").

RecBole has no pictures: the result is text-only. Without a `timestamp` column, line order is
time order. Items are read first (all of them), then the interactions are streamed.
"""

from __future__ import annotations

from pathlib import Path

from mmsr.data.dataset import DatasetWriter
from mmsr.data.importers.base import (ImportReport, ProgressFactory, iter_lines, parse_time, register, require_file,
                                      size_kb)
from mmsr.errors import MMSRError

TYPES = ("token", "token_seq", "float", "float_seq")
CATEGORY_FIELDS = ("categories", "category", "genres", "genre", "class", "tags", "tag")
DESCRIPTION_FIELDS = ("description", "desc")


# RecBole's other atomic files: user features, a knowledge graph and its links to items, a social
# network. Nothing an ID-agnostic item tower reads; they are named in the summary as not read.
UNREAD_SUFFIXES = (".user", ".kg", ".link", ".net")


def _classify(sources: list[Path]) -> tuple[Path, Path, list[Path]]:
    """(the .inter file, the .item file, the atomic files given or found that are not read)."""
    inters: list[Path] = []
    items: list[Path] = []
    unread: list[Path] = []
    for source in sources:
        if source.is_dir() and source.suffix not in (".inter", ".item"):
            inters += sorted(source.glob("*.inter"))
            items += sorted(source.glob("*.item"))
            unread += sorted(path for suffix in UNREAD_SUFFIXES for path in source.glob(f"*{suffix}"))
        elif source.suffix == ".inter":
            inters.append(source)
        elif source.suffix == ".item":
            items.append(source)
        elif source.suffix in UNREAD_SUFFIXES:
            unread.append(source)
        else:
            raise MMSRError("not a RecBole atomic file (.inter or .item)", where=source,
                            hint="pass NAME.inter and NAME.item, or the folder that holds them")
    if len(inters) != 1:
        raise MMSRError(f"recbole: expected one .inter file, found {len(inters)}",
                        where=", ".join(map(str, inters or sources)), hint="pass NAME.inter and NAME.item explicitly")
    if len(items) != 1:
        raise MMSRError(f"recbole: expected one .item file, found {len(items)}",
                        where=", ".join(map(str, items or sources)),
                        hint="an ID-agnostic model needs item text: pass NAME.item with a title field")
    return inters[0], items[0], unread


def parse_header(line: str, path: Path) -> list[tuple[str, str]]:
    fields = []
    for column, cell in enumerate(line.split("\t"), start=1):
        name, colon, kind = cell.strip().rpartition(":")
        if not colon or not name:
            raise MMSRError(f"header field {cell!r} (column {column}) has no type", where=f"{path}:1",
                            hint="RecBole headers are name:type, e.g. user_id:token, timestamp:float")
        if kind not in TYPES:
            raise MMSRError(f"header field {cell!r} (column {column}) has unknown type {kind!r}", where=f"{path}:1",
                            hint="types are " + ", ".join(TYPES))
        fields.append((name, kind))
    names = [name for name, _ in fields]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MMSRError(f"header repeats {', '.join(duplicates)}", where=f"{path}:1")
    return fields


def _column(fields: list[tuple[str, str]], name: str, path: Path, *, required: bool = True) -> int | None:
    for index, (field, _) in enumerate(fields):
        if field == name:
            return index
    if required:
        raise MMSRError(f"no {name!r} column (found: {', '.join(f for f, _ in fields)})", where=f"{path}:1",
                        hint="RecBole's default field names are user_id, item_id and timestamp")
    return None


def _rows(path: Path, advance):
    """(fields, iterator of (line number, cells)) with the column count checked on every row."""
    lines = iter_lines(path, advance)
    header = next(lines, None)
    if header is None or not header[1].strip():
        raise MMSRError("no header line", where=f"{path}:1")
    fields = parse_header(header[1], path)

    def rows():
        for number, line in lines:
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) != len(fields):
                raise MMSRError(f"expected {len(fields)} tab-separated fields, found {len(cells)}",
                                where=f"{path}:{number}")
            yield number, cells

    return fields, rows()


def _text_roles(fields: list[tuple[str, str]]) -> tuple[int | None, int | None, list[int]]:
    names = [name for name, _ in fields]
    text = [i for i, (_, kind) in enumerate(fields) if kind in ("token", "token_seq")]
    title = next((i for i in text if names[i] == "title"), None)
    if title is None:
        title = next((i for i in text if names[i].endswith("title")), None)
    if title is None:
        title = next((i for i in text if names[i] == "name"), None)
    category = next((i for key in CATEGORY_FIELDS for i in text if names[i] == key), None)
    described = [i for key in DESCRIPTION_FIELDS for i in text if names[i] == key]
    others = [i for i in text if names[i] != "item_id" and i not in (title, category) and i not in described]
    return title, category, described + others


@register("recbole", help="RecBole atomic files NAME.inter and NAME.item (or their folder); text only, no images.")
def import_recbole(sources: list[Path], writer: DatasetWriter, report: ImportReport, progress: ProgressFactory) -> None:
    inter_path, item_path, unread = _classify(sources)
    require_file(item_path, ".item file")
    require_file(inter_path, ".inter file")
    writer.items_path = item_path
    if unread:
        report.notes.append(f"not read: {', '.join(path.name for path in unread)} (user features, knowledge "
                            "graph or social links; an item here is its .item text)")

    with progress("items", size_kb(item_path)) as advance:
        fields, rows = _rows(item_path, advance)
        id_col = _column(fields, "item_id", item_path)
        title, category, description = _text_roles(fields)
        if title is None:
            report.notes.append(f"{item_path}: no title field; text comes from the other fields")
        names = [name for name, _ in fields]
        for number, cells in rows:
            def text(index: int, sep: str = " ") -> str:
                kind = fields[index][1]
                return sep.join(cells[index].split()) if kind == "token_seq" else cells[index].strip()

            desc_parts = []
            for index in description:
                value = text(index)
                if value:
                    desc_parts.append(value if names[index] in DESCRIPTION_FIELDS
                                      else f"{names[index].replace('_', ' ')}: {value}")
            writer.add_item(cells[id_col].strip(),
                            title=text(title) if title is not None else "",
                            category=text(category, ", ") if category is not None else "",
                            description="; ".join(desc_parts), where=f"{item_path}:{number}")

    with progress("interactions", size_kb(inter_path)) as advance:
        fields, rows = _rows(inter_path, advance)
        user_col = _column(fields, "user_id", inter_path)
        item_col = _column(fields, "item_id", inter_path)
        time_col = _column(fields, "timestamp", inter_path, required=False)
        if time_col is None:
            report.notes.append(f"{inter_path}: no timestamp column; line order is time order")
        for number, cells in rows:
            where = f"{inter_path}:{number}"
            stamp = float(number) if time_col is None else parse_time(cells[time_col].strip(), where)
            writer.add_interaction(cells[user_col], cells[item_col], stamp, where=where)
