"""Another tool's per-case ranks (RecBole, a paper's script), matched to an mmsr run's cases so
that `mmsr compare RUN other.csv` pairs them case by case.

The file is CSV with a header naming `user`, `item` and `rank` (other columns are ignored):

    user,item,rank
    259,271,98

- `user`, `item`: the IDs of the dataset's source, which `mmsr data import` keeps; `item` is the
  case's target.
- `rank`: 1 + the number of items scoring strictly higher than the target (mmsr's tie rule,
  docs/eval.md), under the protocol of the comparison: RecBole's masks nothing, the paper's masks
  the user's history items. `bench/recbole_fdsa.py` writes such a file for RecBole's FDSA,
  `mmsr ranks` (`write_ranks`) one for an mmsr run.

One row per case of the split, no more: a row whose user has another target in the run means
the two tools split the data differently, and that is refused with the row's line, as is a case
left without a row. Two tools can differ there without either being wrong: RecBole orders a
user's interactions by a float32 timestamp, which cannot tell seconds apart at 1990s Unix times
(float32 steps are 64 s there), so on MovieLens-100K 4 of 943 users get another test target.
`shared_only` then keeps the cases both rank and says what it left out. Cases are keyed by
(user, target), so a split in which one user has two cases with the same target (a re-consumed
item on the cold split) cannot be matched.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsr.atomic import atomic_write_text
from mmsr.errors import MMSRError

COLUMNS = ("user", "item", "rank")
SUFFIXES = (".csv",)


def is_ranks_file(name: str) -> bool:
    """`mmsr compare`'s arguments: a ranks file by its suffix, anything else is a run."""
    return Path(name).suffix.lower() in SUFFIXES


@dataclass
class CaseKeys:
    """A run's cases as another tool names them: `users[i]` and `items[i]` are case i's user
    and target IDs, in the dataset's own spelling."""

    split: str
    users: list[str]
    items: list[str]
    num_items: int


@dataclass
class FileRanks:
    """`ranks[i]`: the file's rank for case i, 0 where it has no row for it (`shared_only`);
    `unmatched`: the rows that name no case of the run, as "path:line: why"."""

    ranks: np.ndarray
    unmatched: list[str]

    @property
    def matched(self) -> np.ndarray:
        return self.ranks > 0


def check_ranks_file(path: str | Path) -> Path:
    """`path`, refused unless it is a file (a folder named NAME.csv was "no such ranks file")."""
    path = Path(path)
    if not path.is_file():
        raise MMSRError("a folder, not a ranks file" if path.is_dir() else "no such ranks file", where=path,
                        hint="give a CSV with columns user,item,rank (see `mmsr compare --help`)")
    return path


def read_ranks(path: str | Path, cases: CaseKeys, *, shared_only: bool = False) -> FileRanks:
    """The file's rank for each of `cases`, in the cases' order (int64, 1-based). A row that
    names no case, or a case without a row, is refused, unless `shared_only`: then both are
    left out (rank 0, `unmatched`). Malformed rows are refused either way."""
    path = check_ranks_file(path)
    index = _case_index(cases)
    # For the refusal's message: a user's one target, where the split has one case per user.
    target_of = dict(zip(cases.users, cases.items)) if len(set(cases.users)) == len(cases.users) else {}
    ranks = np.zeros(len(cases.users), dtype=np.int64)
    seen_at = np.zeros(len(cases.users), dtype=np.int64)  # the line that gave case i its rank
    unmatched = []
    # utf-8-sig: a spreadsheet's CSV often starts with a byte-order mark, which would hide the
    # first column's name.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MMSRError(f"the header lacks {', '.join(missing)}", where=f"{path}:1",
                            hint="the first line must name the columns user,item,rank")
        for row in reader:
            line = reader.line_num
            if any(row[column] is None for column in COLUMNS):
                fields = sum(value is not None for value in row.values())
                raise MMSRError(f"the row has {fields} field{'s' if fields != 1 else ''}, the header names "
                                f"{len(reader.fieldnames)}", where=f"{path}:{line}",
                                hint="give every row a user, an item and a rank, comma-separated")
            user, item = row["user"], row["item"]
            rank = _rank(row["rank"], cases.num_items, f"{path}:{line}")
            case = index.get((user, item))
            if case is None:
                why = _unmatched(user, item, target_of, cases.split)
                if not shared_only:
                    raise MMSRError(why, where=f"{path}:{line}",
                                    hint="rank the same cases as the run (the same dataset, split the same way, "
                                         "one row per case), or pass --shared-cases to pair only the cases both rank")
                unmatched.append(f"{path}:{line}: {why}")
                continue
            if seen_at[case]:
                raise MMSRError(f"a second row for user {user}, item {item} (the first is line {seen_at[case]})",
                                where=f"{path}:{line}", hint="give each case one row")
            ranks[case] = rank
            seen_at[case] = line
    absent = np.flatnonzero(seen_at == 0)
    if len(absent) and not shared_only:
        first = int(absent[0])
        raise MMSRError(f"{len(absent):,} of the run's {len(cases.users):,} {cases.split} cases have no row "
                        f"(the first: user {cases.users[first]}, item {cases.items[first]})", where=path,
                        hint="rank every case of the split, or pass --shared-cases to pair only the cases both rank")
    return FileRanks(ranks, unmatched)


def write_ranks(path: str | Path, cases: CaseKeys, ranks: np.ndarray) -> Path:
    """Case i's rank `ranks[i]` as a row of a ranks file at `path`, in the cases' order; the file
    appears whole or not at all. IDs are quoted where CSV needs it, so `read_ranks` reads back
    any ID the dataset has."""
    if len(ranks) != len(cases.users):
        raise ValueError(f"{len(ranks)} ranks for {len(cases.users)} cases")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(zip(cases.users, cases.items, (int(r) for r in ranks)))
    path = Path(path)
    atomic_write_text(path, out.getvalue())  # its folder made there, or named when it cannot be
    return path


def _case_index(cases: CaseKeys) -> dict[tuple[str, str], int]:
    index: dict[tuple[str, str], int] = {}
    for case, key in enumerate(zip(cases.users, cases.items)):
        if key in index:
            raise MMSRError(f"the run's {cases.split} split has two cases for user {key[0]} with target {key[1]}, "
                            "which a ranks file keyed by (user, item) cannot tell apart", where="--split",
                            hint="compare with a ranks file on the test or valid split (one case per user)")
        index[key] = case
    return index


def _unmatched(user: str, item: str, target_of: dict[str, str], split: str) -> str:
    if user in target_of:
        return f"user {user}'s {split} target is item {target_of[user]} in the run; this row has item {item}"
    return f"user {user} has no {split} case with target {item} in the run"


def _rank(text: str, num_items: int, where: str) -> int:
    try:
        rank = int(text)
    except (TypeError, ValueError):
        rank = 0
    if not 1 <= rank <= num_items:
        raise MMSRError(f"rank {text!r} is not a whole number from 1 to {num_items:,} (the catalogue's size)",
                        where=where, hint="ranks are 1-based: 1 + the items scoring strictly higher")
    return rank
