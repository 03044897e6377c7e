"""The registry: duplicates and unknown names are refused, and declared names answer without
importing their provider."""
from __future__ import annotations

import sys
import types

import pytest

from lorascope.errors import UsageError
from lorascope.registry import Registry


def test_duplicate_registration_is_a_bug():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(2)


def test_unknown_name_lists_the_valid_ones():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    reg.register("b")(2)
    with pytest.raises(UsageError, match="unknown thing 'c'; choose one of: a, b"):
        reg.get("c")


def _provider(monkeypatch, name: str, body) -> list[str]:
    """A fake provider module: importing it runs `body` and is recorded."""
    imported: list[str] = []

    class Finder:
        def find_spec(self, fullname, path=None, target=None):
            if fullname != name:
                return None
            from importlib.machinery import ModuleSpec

            class Loader:
                def create_module(self, spec):
                    return types.ModuleType(name)

                def exec_module(self, module):
                    imported.append(name)
                    body()

            return ModuleSpec(name, Loader())

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    return imported


def test_declared_names_answer_without_importing_the_provider(monkeypatch):
    reg: Registry[int] = Registry("thing", {"a": "the first", "b": "the second"}, provider="fake_provider_ok")
    imported = _provider(monkeypatch, "fake_provider_ok", lambda: (reg.register("a")(1), reg.register("b")(2)))
    assert reg.names() == ["a", "b"] and "a" in reg and reg.description("b") == "the second"
    assert imported == []
    assert reg.get("b") == 2
    assert imported == ["fake_provider_ok"]
    with pytest.raises(UsageError, match="choose one of: a, b"):
        reg.get("z")


def test_a_declared_name_the_provider_lacks_is_caught_at_load(monkeypatch):
    reg: Registry[int] = Registry("thing", {"a": "", "b": ""}, provider="fake_provider_short")
    _provider(monkeypatch, "fake_provider_short", lambda: reg.register("a")(1))
    with pytest.raises(ValueError, match="b declared but not implemented"):
        reg.get("a")


def test_an_undeclared_implementation_is_refused():
    reg: Registry[int] = Registry("thing", {"a": ""}, provider="unused")
    with pytest.raises(ValueError, match="not declared"):
        reg.register("b")
