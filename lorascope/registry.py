"""Registries: inits, optimizers, schedules, models, data sources, tasks, analysis tables, report
figures and distribution families are looked up by name, so the CLI's choices always come from
what exists.

A registry whose implementations need heavy libraries (torch, transformers, pandas, matplotlib)
*declares* its names with their one-line descriptions where importing costs nothing (its
package's ``__init__``), and names the ``provider`` module that registers the implementations.
``names()`` and ``description()`` then answer without importing anything, so ``--help`` starts in
a fraction of a second; the first ``get()`` imports the provider. A declared name that the
provider does not implement, or an implemented name that was not declared, is a bug caught when
the provider is loaded (the test suite loads every provider)."""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from lorascope.errors import UsageError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names to objects. Registering a name twice is a bug; asking for an unknown name
    is a user error whose message lists the valid names."""

    def __init__(self, kind: str, declared: dict[str, str] | None = None, provider: str | None = None) -> None:
        if (declared is None) != (provider is None):
            raise ValueError(f"{kind} registry: declare names together with their provider module")
        self.kind = kind
        self.provider = provider
        self._declared: dict[str, str] = dict(declared or {})  # name -> one-line description
        self._entries: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._loaded = provider is None

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        if self._declared and name not in self._declared:
            raise ValueError(f"{self.kind} {name!r} is implemented but not declared; add it to the declared names")

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            if description:
                self._descriptions[name] = description
            return obj

        return decorator

    def load(self) -> None:
        """Imports the provider (once) and checks that it implements every declared name."""
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self.provider)
        missing = [n for n in self._declared if n not in self._entries]
        if missing:
            raise ValueError(f"{self.kind} {', '.join(missing)} declared but not implemented by {self.provider}")

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._declared:
            self.load()
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._declared) + [n for n in self._entries if n not in self._declared]

    def description(self, name: str) -> str:
        """The one-line description given at declaration (or registration); '' when none."""
        return self._declared.get(name) or self._descriptions.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._declared or name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
