"""Typed configs: dataclasses, one YAML/TOML file per run, and `--set a.b=value` overrides.

Unknown keys, wrong types and settings that the chosen components would ignore (a dataclass's
`check()`) are errors, all gathered into one message: a misspelt key that silently falls back to
a default, or a knob that changes nothing, is the trap this avoids.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from mmsr.errors import MMSRError

T = TypeVar("T")


BASE_KEY = "base"
# What numpy's and torch's seeding take (numpy refuses the rest, torch wraps a negative seed).
MAX_SEED = 2**32 - 1
SEED_RANGE = f"from 0 to {MAX_SEED} (2**32 - 1)"


def seed_problem(value: int) -> str | None:
    return None if 0 <= value <= MAX_SEED else f"must be {SEED_RANGE}"


def read_file(path: str | Path) -> dict:
    """A config file's mapping, with its `base` (another config file, relative to this one)
    merged in underneath: a peer of the demo profile says what it changes and nothing else, so
    a setting of the profile cannot drift out of step in a copy. Bases may chain."""
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, below: tuple[Path, ...]) -> dict:
    data = _read_one(path)
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise MMSRError(f"{BASE_KEY} must be the path of another config file, got {base!r}", where=path,
                        hint=f'e.g. {BASE_KEY} = "../demo-cpu.toml" (relative to this file)')
    # Relative to the real file, not to a link to it: a linked copy of a peer still finds its profile.
    base_path = (path.resolve().parent / base).resolve()
    chain = (*below, path.resolve())
    if base_path in chain:
        raise MMSRError(f"{BASE_KEY} = {base!r} makes a loop: "
                        + " -> ".join(str(p) for p in (*chain, base_path)), where=path)
    if not base_path.is_file():
        raise MMSRError(f"{BASE_KEY} = {base!r}: no such file ({base_path})", where=path,
                        hint="the base path is relative to the file that names it")
    return merge(_read_with_bases(base_path, chain), data)


def read_utf8(path: Path) -> str:
    """A config or study file's text; one that is not UTF-8 is named with its byte and line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise MMSRError(f"not UTF-8: byte 0x{raw[error.start]:02x} at line {line}", where=path,
                        hint="save the file as UTF-8") from None


def _read_one(path: Path) -> dict:
    if path.is_dir():
        raise MMSRError("a folder, not a config file", where=path, hint="give a .toml, .yaml or .json file")
    if not path.is_file():
        raise MMSRError("config file not found", where=path)
    text = read_utf8(path)
    try:
        if path.suffix == ".toml":
            data = parse_toml(text, path)
        elif path.suffix in (".yaml", ".yml"):
            data = parse_yaml(text, path)
        elif path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_refuse_repeated_keys)
        else:
            raise MMSRError("unknown config format", where=path, hint="use .toml, .yaml or .json")
    except ValueError as error:  # json's, with its line and column
        raise MMSRError(f"cannot parse config: {error}", where=path) from None
    if not isinstance(data, dict):
        raise MMSRError("a config file must hold a mapping at the top level", where=path)
    return data


_TOML_AT = re.compile(r"\s*\(at line (\d+), column \d+\)$")
_TOML_TWICE = ("Cannot overwrite a value", "Cannot declare")
_TOML_TABLE = re.compile(r"\[+\s*([^\]]+?)\s*\]+")  # [table] or [[array of tables]]


def parse_toml(text: str, path: Path, what: str = "config") -> dict:
    """tomllib's mapping, or an error that names the line and quotes it: tomllib says only "Cannot
    overwrite a value (at line 9, column 11)" when a key is set twice, which in a long config
    is the one error whose key the user then has to hunt for."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        at = _TOML_AT.search(message)
        if not at:
            raise MMSRError(f"cannot parse {what}: {message}", where=path) from None
        number = int(at.group(1))
        lines = text.splitlines()
        quoted = lines[number - 1].strip() if number <= len(lines) else ""
        message = message[: at.start()]
        hint = None
        if message.startswith(_TOML_TWICE):
            key = _toml_key_at(lines, number)
            if key and key.startswith("["):
                message, quoted = f"the table {key} is opened twice", ""
            elif key:
                message = f"{key} is set twice"
            hint = "TOML allows each key and each [table] once: remove or merge the earlier one"
        raise MMSRError(f"cannot parse {what}: {message}" + (f" (`{quoted}`)" if quoted else ""),
                        where=f"{path}:{number}", hint=hint) from None


def _toml_key_at(lines: list[str], number: int) -> str | None:
    """The dotted key that line `number` (1-based) sets or the [table] it opens, read as the user
    wrote it: the table headers above it give the prefix."""
    line = lines[number - 1].split("#", 1)[0].strip()
    header = _TOML_TABLE.fullmatch(line)
    if header:
        return f"[{header.group(1)}]"
    if "=" not in line:
        return None
    key = line.split("=", 1)[0].strip()
    for above in reversed(lines[: number - 1]):
        table = _TOML_TABLE.fullmatch(above.split("#", 1)[0].strip())
        if table:
            return f"{table.group(1)}.{key}"
    return key


def parse_yaml(text: str, path: Path) -> Any:
    """yaml.safe_load, refusing a key repeated in one mapping (PyYAML keeps the last one without a
    word); an error names the file's line in one line, not PyYAML's multi-line mark."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} is set twice in one mapping; "
                                                            "each key may appear once", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        return yaml.load(text, Loader=Loader) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        said = " ".join(part for part in (error.context, error.problem) if part)
        raise MMSRError(f"cannot parse config: {said}", where=f"{path}:{mark.line + 1}" if mark else path) from None
    except yaml.YAMLError as error:
        raise MMSRError(f"cannot parse config: {error}".replace("\n", " "), where=path) from None


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json.loads keeps the last of a repeated key without a word; a config refuses it, as TOML does."""
    twice = sorted(key for key, count in collections.Counter(key for key, _ in pairs).items() if count > 1)
    if twice:
        raise ValueError(f"{', '.join(map(repr, twice))} set twice in one object; each key may appear once")
    return dict(pairs)


def parse_overrides(items: list[str] | None) -> dict:
    """`["optim.lr=1e-4", "model.fusion=gate"]` -> nested dict; values parsed as YAML scalars."""
    import yaml

    nested: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MMSRError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set optim.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MMSRError(f"--set {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build(cls: type[T], data: dict | None = None, *, source: str = "config",
          given_by_set: typing.AbstractSet[str] = frozenset()) -> T:
    """Build dataclass `cls` from a nested dict, checking every key and type and running each
    dataclass's `check()` (a list of problems), if it has one. A problem with a key in
    `given_by_set` (dotted) is named as the --set's: the file did not say it."""
    problems: list[str] = []
    result = _build(cls, data or {}, "", problems)
    problems = [f"--set {problem}" if _names_a_key(problem, given_by_set) else problem for problem in problems]
    if problems:
        raise MMSRError("invalid " + source + ": " + "; ".join(problems))
    return result


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         flags: dict[str, Any] | None = None, *, base: dict | None = None,
         from_file: typing.Callable[[dict, str], dict] | None = None, source: str = "config") -> T:
    """Defaults <- `base` <- config file <- `--set` overrides <- explicit flags: the one precedence
    every command follows.

    `flags` maps dotted keys (`"seed"`, `"encoders.max_text_len"`) to typed values, as a
    command's options give them; None means the option was not given. `from_file(data, source)`
    may reduce the file's mapping first (a cache build reads only its part of a training config).
    `source` names what was read in errors (a given `path` names itself).
    """
    data = dict(base or {})
    if path is not None:
        source = f"config {path}"
        found = read_file(path)
        data = merge(data, from_file(found, source) if from_file else found)
    overridden = parse_overrides(overrides)
    # A misspelt --set is the user's to fix, not the file's: name it as theirs.
    unknown = unknown_keys(cls, overridden)
    if unknown:
        raise MMSRError("invalid --set: " + "; ".join(unknown))
    data = merge(data, overridden)
    given: dict = {}
    for key, value in (flags or {}).items():
        if value is None:
            continue
        *sections, name = key.split(".")
        node = given
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return build(cls, merge(data, given), source=source, given_by_set=set(flatten(overridden)))


def _names_a_key(problem: str, keys: typing.AbstractSet[str]) -> bool:
    """Whether a problem is about one of `keys`: it starts with the key, then a space or `=`."""
    return any(problem.startswith((f"{key} ", f"{key}=")) for key in keys)


def flatten(nested: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}: a config's values by dotted key."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unknown_keys(cls: type, data: dict, prefix: str = "") -> list[str]:
    """Every key of `data` (nested) that dataclass `cls` has no field for, with a near name."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    problems = []
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1) or [name for name in fields
                                                                    if name.startswith(key[:3])]
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            sections = [name for name in fields if dataclasses.is_dataclass(hints[name])]
            where = f"; the sections are {', '.join(sections)}" if not prefix and isinstance(value, dict) else ""
            problems.append(f"unknown key {prefix}{key}{suggestion}{where}")
        elif dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            problems += unknown_keys(hints[key], value, f"{prefix}{key}.")
    return problems


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    # This level's; deeper ones below. An unknown key's own value goes along: a table is named a section.
    problems += unknown_keys(cls, {key: None if key in fields else value for key, value in data.items()}, prefix)
    values = {}
    for name, field in fields.items():
        if name not in data:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, data[name], f"{prefix}{name}.", problems)
        else:
            ok, value = _coerce(kind, data[name])
            if ok:
                values[name] = value
            else:
                problems.append(f"{prefix}{name} must be {_type_name(kind)}, got {data[name]!r}")
    try:
        result = cls(**values)
    except (TypeError, ValueError) as error:
        problems.append(f"{prefix.rstrip('.')}: {error}" if prefix else str(error))
        return cls()
    # Settings valid one by one but wrong together (e.g. a knob the chosen component ignores).
    check = getattr(result, "check", None)
    if callable(check):
        problems.extend(f"{prefix}{problem}" for problem in check())
    return result


def _type_name(kind: Any) -> str:
    if kind is float:
        return "a finite number"
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(kind)))
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _coerce(kind: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(kind)
    if kind is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            ok, out = _coerce(option, value)
            if ok:
                return True, out
        return False, None
    if kind is type(None):
        return value is None, None
    if origin is typing.Literal:
        return value in typing.get_args(kind), value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            return False, None
        (item_kind, *_) = typing.get_args(kind) or (Any,)
        out = []
        for item in value:
            ok, coerced = _coerce(item_kind, item)
            if not ok:
                return False, None
            out.append(coerced)
        return True, origin(out)
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        # NaN and infinity pass every range check (NaN < x is False) and surfaced an epoch later
        # as a diverged model, or not at all (a NaN grad_clip switched clipping off).
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value), float(value)
        # YAML 1.1 (PyYAML, which reads --set values) takes "2e-3" for a string: it wants a dot.
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return False, None
            return math.isfinite(number), number
        return False, None
    if kind is str:
        return isinstance(value, str), value
    return isinstance(value, kind), value
