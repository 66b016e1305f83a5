"""`amazon2023`: Amazon Reviews 2023 (McAuley lab), one category.

    CATEGORY.jsonl        reviews: {"user_id", "parent_asin", "timestamp" (ms), "rating", ...}
    meta_CATEGORY.jsonl   items:   {"parent_asin", "title", "features": [...], "description": [...],
                                    "categories": [...], "main_category", "images": [{"large", "hi_res", ...}]}
    IMAGES/               pictures downloaded beforehand (no machine here fetches URLs)

Either file may be gzipped (`.jsonl.gz`). Reviews and meta are joined on `parent_asin`.
Text: title <- title; description <- features then description; category <- categories joined
with " > " (main_category when empty). A picture is looked up in the images folder as
`PARENT_ASIN.jpg|jpeg|png|webp`, then under the file name of each image URL of the item
(hi_res, large, thumb, main picture first). A missing picture follows --on-bad-image; without
an images folder the dataset is text-only.

Three streaming passes keep memory to a set of ids: reviews (which items are used), meta
(write only those items), reviews again (write the interactions). Meta items that no review
names are skipped.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from mmsr.data.dataset import DatasetWriter
from mmsr.data.importers.base import (ImportReport, ProgressFactory, bad_image, find_picture, iter_json_lines, parse_time,
                                      register, require_dir, require_file, size_kb)
from mmsr.errors import MMSRError


def _classify(sources: list[Path]) -> tuple[Path, Path, Path | None]:
    reviews: list[Path] = []
    metas: list[Path] = []
    folders: list[Path] = []
    for source in sources:
        name = source.name
        if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            (metas if name.startswith("meta_") else reviews).append(source)
        elif source.is_dir():
            folders.append(source)
        else:
            raise MMSRError("not an Amazon Reviews 2023 source", where=source,
                            hint="expected CATEGORY.jsonl (reviews), meta_CATEGORY.jsonl and a folder of pictures")
    for kind, found in (("reviews file (CATEGORY.jsonl)", reviews), ("meta file (meta_CATEGORY.jsonl)", metas)):
        if len(found) != 1:
            raise MMSRError(f"amazon2023: expected one {kind}, found {len(found)}",
                            where=", ".join(map(str, found or sources)))
    if len(folders) > 1:
        raise MMSRError("amazon2023: more than one images folder", where=", ".join(map(str, folders)))
    return reviews[0], metas[0], folders[0] if folders else None



def _string(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value).strip() == "":
        raise MMSRError(f"missing or empty {key!r}", where=where)
    return str(value).strip()


def _texts(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # a title "1984" written as a number
        return [str(value)]
    if isinstance(value, list):
        return [str(part) for part in value if isinstance(part, (str, int, float)) and str(part).strip()]
    return []


def _url_names(images) -> list[str]:
    if not isinstance(images, list):
        return []
    entries = [entry for entry in images if isinstance(entry, dict)]
    entries.sort(key=lambda entry: entry.get("variant") != "MAIN")  # stable: MAIN first
    names = []
    for entry in entries:
        for key in ("hi_res", "large", "thumb"):
            url = entry.get(key)
            if isinstance(url, str) and url:
                names.append(Path(urlparse(url).path).name)
    return names


@register("amazon2023", help="Amazon Reviews 2023: CATEGORY.jsonl (reviews), meta_CATEGORY.jsonl and a folder "
                             "of downloaded pictures (optional).")
def import_amazon2023(sources: list[Path], writer: DatasetWriter, report: ImportReport,
                      progress: ProgressFactory) -> None:
    reviews_path, meta_path, images = _classify(sources)
    require_file(reviews_path, "reviews file")
    require_file(meta_path, "meta file")
    writer.items_path = meta_path
    if images is None:
        report.notes.append("no images folder given: the dataset has no images")
    else:
        require_dir(images, "images folder")

    used: set[str] = set()
    with progress("reviews (scan)", size_kb(reviews_path)) as advance:
        for where, record in iter_json_lines(reviews_path, advance):
            _string(record, "user_id", where)
            parse_time(record.get("timestamp"), where)
            used.add(_string(record, "parent_asin", where))

    skipped = 0
    with progress("meta", size_kb(meta_path)) as advance:
        for where, record in iter_json_lines(meta_path, advance):
            asin = _string(record, "parent_asin", where)
            if asin not in used:
                skipped += 1
                continue
            image = None
            if images is not None:
                image = find_picture(images, [asin, *_url_names(record.get("images"))])
                if image is None:
                    image = bad_image(writer, f"no picture for item {asin!r} in {images}", where,
                                      hint=f"save it as {images}/{asin}.jpg, or use --on-bad-image skip|placeholder")
            categories = _texts(record.get("categories")) or _texts(record.get("main_category"))
            writer.add_item(asin, title=" ".join(_texts(record.get("title"))),
                            description=" ".join(_texts(record.get("features")) + _texts(record.get("description"))),
                            category=" > ".join(categories), image=image, where=where)
    if skipped:
        report.notes.append(f"{skipped:,} items of {meta_path.name} have no review: skipped")

    with progress("reviews", size_kb(reviews_path)) as advance:
        for where, record in iter_json_lines(reviews_path, advance):
            writer.add_interaction(_string(record, "user_id", where), _string(record, "parent_asin", where),
                                   parse_time(record.get("timestamp"), where), where=where)
