"""Comma-separated options (`--k 10,20`, `--split test,cold`, `--history i1,i2`, compare's `A1,A2`)."""

from __future__ import annotations

from mmsr.errors import MMSRError


def split_commas(text: str, *, where: str, example: str) -> list[str]:
    """The members of `text`, stripped. An empty member ("a,,b", "a,") is refused rather than
    dropped: it is most often a name that went missing while editing the command."""
    if not text.strip():
        raise MMSRError("nothing given", where=where, hint=f"name at least one, e.g. {example}")
    members = [member.strip() for member in text.split(",")]
    if not all(members):
        raise MMSRError(f"an empty member in {text!r}: a comma-separated list needs a value between every two "
                        "commas", where=where, hint=f"e.g. {example}")
    return members
