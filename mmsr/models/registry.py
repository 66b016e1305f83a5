"""A tiny name -> builder registry, shared by fusion modules and sequence models (timm style)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from mmsr.errors import MMSRError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._builders[name] = builder
            return builder

        return decorate

    def create(self, name: str, **kwargs) -> T:
        if name not in self._builders:
            raise MMSRError(f"unknown {self.kind} {name!r}", hint="choose one of " + ", ".join(self.names()))
        return self._builders[name](**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders
