"""A tiny name -> builder registry (timm style): fusion modules, sequence models, importers.

Each entry declares the knobs its builder reads (`params`) and the inputs it cannot do without
(`needs`), so that a config can refuse a setting the chosen component would ignore before
anything is built, without a list of names kept apart from the registrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from mmsr.errors import MMSRError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    builder: Callable[..., T]
    params: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    help: str = ""  # one line for --help


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, params: tuple[str, ...] = (), needs: tuple[str, ...] = (), help: str = ""
                 ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(builder, tuple(params), tuple(needs), help)
            return builder

        return decorate

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise MMSRError(f"unknown {self.kind} {name!r}", hint="choose one of " + ", ".join(self.names()))
        return self._entries[name]

    def create(self, name: str, **kwargs) -> T:
        return self.entry(name).builder(**kwargs)

    def params(self, name: str) -> tuple[str, ...]:
        return self.entry(name).params

    def needs(self, name: str) -> tuple[str, ...]:
        return self.entry(name).needs

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """Each name's one line for a listing: its `help`, else its builder's docstring's first line."""
        return {name: self._entries[name].help or first_line(self._entries[name].builder.__doc__)
                for name in self.names()}

    def taking(self, param: str) -> list[str]:
        return [name for name in self.names() if param in self._entries[name].params]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def first_line(doc: str | None) -> str:
    """A docstring's first sentence, on one line, without its full stop: a registry entry's help."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".")
