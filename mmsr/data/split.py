"""The paper's protocol (seed §4.1, §4.5 and its reference code).

1. Each user's interactions in chronological order; ties keep file order (stable sort).
2. Users with fewer than `min_interactions` interactions are dropped.
3. Optionally, `sample_users` users are kept, drawn with `seed`.
4. Leave-one-out: the last item is the test target, the second-last the validation target;
   everything before is training data.
5. Cold items: items seen fewer than `cold_threshold` times in the training part (items
   never seen in training are cold too).
6. The cold test set: every prefix of a user's complete sequence that ends in a cold item
   (with at least `cold_min_history` items before it), as in Table I's "#cold".
7. The new test set: the test cases whose target has no training interaction at all. The
   paper's cold items are mostly items an ID table has seen a few times (and can learn);
   on new items an ID model knows nothing and only content can rank them.
8. The cold-test set: the test cases whose target is a cold item. The paper's cold set (6)
   is mostly prefixes that end inside the training part, whose targets the model was trained
   on: on MovieLens-100K 2,080 of its 2,156 cases. An ID model memorises those transitions,
   so (6) measures recall of training data as much as cold-start ranking; this set holds out
   every target (docs/compare.md, "Where the cold split's cases come from").

Sequences are stored as CSR arrays (`offsets`, `items`), so a million users cost two arrays,
not a million Python lists. `max_seq_len` is applied where sequences are fed to a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmsr.errors import MMSRError

SPLITS = ("train", "valid", "test", "cold", "new", "cold-test")
EVAL_SPLITS = ("test", "valid", "cold", "new", "cold-test")


@dataclass
class SplitConfig:
    min_interactions: int = 5
    sample_users: int | None = None
    seed: int = 0
    max_seq_len: int = 20
    cold_threshold: int = 10
    cold_min_history: int = 1

    def __post_init__(self):
        if self.min_interactions < 3:
            raise ValueError("min_interactions must be at least 3 (train, valid and test need one item each)")
        if self.max_seq_len < 1:
            raise ValueError("max_seq_len must be positive")
        if self.sample_users is not None and self.sample_users < 1:
            raise ValueError("sample_users must be positive")
        if self.cold_threshold < 0:
            raise ValueError("cold_threshold must be 0 or more (items seen fewer times in training are cold; "
                             "0: none)")
        if self.cold_min_history < 1:
            raise ValueError("cold_min_history must be at least 1")


@dataclass
class EvalCases:
    """Evaluation cases: the target is `items[offsets[user] + pos]`, its history the items before it."""

    split: str
    users: np.ndarray  # int64 user index per case
    positions: np.ndarray  # int64 position of the target within the user's sequence

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Split:
    config: SplitConfig
    num_items: int
    user_ids: list[str]  # kept users, in order of first appearance in the file
    offsets: np.ndarray  # int64 [U+1]
    items: np.ndarray  # int64 [sum of lengths]: item indices, chronological per user
    train_counts: np.ndarray  # int64 [num_items]: occurrences in the training part
    cold_items: np.ndarray  # bool [num_items]

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]:self.offsets[user + 1]]

    def train_sequence(self, user: int) -> np.ndarray:
        """The training part: everything but the last two items."""
        return self.items[self.offsets[user]:self.offsets[user + 1] - 2]

    def history(self, user: int, position: int, max_len: int | None = None) -> np.ndarray:
        start = self.offsets[user]
        if max_len is not None:
            start = max(start, start + position - max_len)
        return self.items[start:self.offsets[user] + position]

    def target(self, user: int, position: int) -> int:
        return int(self.items[self.offsets[user] + position])

    def cases(self, split: str) -> EvalCases:
        lengths = self.lengths()
        users = np.arange(self.num_users, dtype=np.int64)
        if split == "test":
            return EvalCases(split, users, lengths - 1)
        if split == "valid":
            return EvalCases(split, users, lengths - 2)
        if split == "cold":
            cold = self.cold_items[self.items]
            position = np.arange(len(self.items), dtype=np.int64) - np.repeat(self.offsets[:-1], lengths)
            keep = cold & (position >= self.config.cold_min_history)
            return EvalCases(split, np.repeat(users, lengths)[keep], position[keep])
        if split in ("new", "cold-test"):  # the test cases whose target was never trained on / is cold
            target = self.items[self.offsets[1:] - 1]
            keep = self.train_counts[target] == 0 if split == "new" else self.cold_items[target]
            return EvalCases(split, users[keep], (lengths - 1)[keep])
        raise MMSRError(f"unknown split {split!r}", hint="use " + ", ".join(EVAL_SPLITS))

    def stats(self) -> dict:
        lengths = self.lengths()
        return {
            "users": self.num_users,
            "interactions": int(lengths.sum()),
            "cold_items": int(self.cold_items.sum()),
            "cold_sequences": len(self.cases("cold")),
            "new_items": int((self.train_counts == 0).sum()),
            "new_test_cases": len(self.cases("new")),
            "cold_test_cases": len(self.cases("cold-test")),
            "avg_seq_len": round(float(lengths.mean()), 4) if len(lengths) else 0.0,
        }


def make_split(user_of: np.ndarray, item_of: np.ndarray, time_of: np.ndarray, num_items: int,
               user_ids: list[str], config: SplitConfig | None = None) -> Split:
    """Apply the protocol to interaction arrays (in file order)."""
    config = config or SplitConfig()
    user_of = np.asarray(user_of, dtype=np.int64)
    # Stable sort by (user, time): equal timestamps keep file order (ML-100K has many).
    order = np.lexsort((np.arange(len(user_of)), np.asarray(time_of), user_of))
    sorted_users = user_of[order]
    sorted_items = np.asarray(item_of, dtype=np.int64)[order]
    counts = np.bincount(sorted_users, minlength=len(user_ids))
    kept = np.flatnonzero(counts >= config.min_interactions)
    if config.sample_users is not None and config.sample_users < len(kept):
        rng = np.random.default_rng(config.seed)
        kept = np.sort(rng.choice(kept, size=config.sample_users, replace=False))
    if len(kept) == 0:
        raise MMSRError(f"no user has at least {config.min_interactions} interactions",
                        hint="lower split.min_interactions, or check the interactions table")
    lengths = counts[kept]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = sorted_items[np.isin(sorted_users, kept)]  # rows are grouped by user, users ascending
    train_mask = np.ones(len(items), dtype=bool)
    train_mask[offsets[1:] - 1] = False
    train_mask[offsets[1:] - 2] = False
    train_counts = np.bincount(items[train_mask], minlength=num_items).astype(np.int64)
    cold = train_counts < config.cold_threshold
    return Split(config, num_items, [user_ids[u] for u in kept], offsets, items, train_counts, cold)


def split_dataset(dataset, config: SplitConfig | None = None) -> Split:
    return make_split(dataset.inter_user, dataset.inter_item, dataset.inter_time, dataset.num_items,
                      dataset.user_ids, config)


def dataset_report(dataset, config: SplitConfig | None = None) -> dict:
    """What `mmsr data info` reports: counts after the protocol, and the raw counts before it."""
    from dataclasses import asdict

    config = config or SplitConfig()
    counts = dataset.meta["counts"]
    stats = split_dataset(dataset, config).stats()
    return {
        "name": dataset.name,
        "path": str(dataset.root),
        "users": stats["users"],
        "items": dataset.num_items,
        "interactions": stats["interactions"],
        "items_with_image": counts["items_with_image"],
        "items_with_text": counts["items_with_text"],
        "cold_items": stats["cold_items"],
        "cold_sequences": stats["cold_sequences"],
        "new_items": stats["new_items"],
        "new_test_cases": stats["new_test_cases"],
        "cold_test_cases": stats["cold_test_cases"],
        "avg_seq_len": stats["avg_seq_len"],
        "raw": {"users": counts["users"], "interactions": counts["interactions"]},
        "protocol": {key: asdict(config)[key] for key in ("min_interactions", "cold_threshold", "max_seq_len")},
        "content_hash": dataset.meta.get("content_hash"),
    }
