"""What a model *is*, independent of where it lies: the key caches are named and checked by.

A short name (`minilm`) or a Hub name is its own key. A local directory or weights file is
keyed by its bytes: `local:<sha256>` over every file in it (relative path and content), so
a cache built with `--text-model /a/ckpt` is found again with the same checkpoint copied to
`/b/ckpt`, or mounted elsewhere in a container, and a changed checkpoint never matches.

    model_key("minilm")                        -> "minilm"
    model_key("/data/models/my-bert")          -> "local:3f2a..."
    model_key("timm:resnet50@/w/r50.safetensors") -> "timm:resnet50@local:9c1e..."
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_BLOCK = 1 << 20
_file_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def model_key(spec: str | os.PathLike) -> str:
    from mmsr.encoders.registry import short_names  # deferred: the registry imports this module's users

    text = str(spec)
    if not text or text in short_names():  # as in resolve_spec, a short name wins over a same-named folder
        return text
    prefix, sep, rest = text.partition(":")
    if sep and not Path(text).expanduser().exists():
        name, at, weights = rest.partition("@")  # open_clip:NAME@weights, timm:NAME@weights
        return f"{prefix}:{name}{at}{model_key(weights)}" if at else text
    path = Path(text).expanduser()
    if path.is_dir():
        return "local:" + _directory_sha256(path)
    if path.is_file():
        return "local:" + _file_sha256(path)
    return text


def _directory_sha256(root: Path) -> str:
    """sha256 over (relative path, file sha256) of every file, in sorted order; hidden entries
    (.git, .cache, editor files) are skipped, as they are not part of the model."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        digest.update(relative.as_posix().encode() + b"\0" + _file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]
