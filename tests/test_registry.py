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


# The training side's registries declare their names in light front doors and implement them in
# heavy modules; loading each provider checks that the two lists agree (an implementation of an
# undeclared name is refused when it registers).
def _training_registries():
    from lorascope.data import SOURCES, TASKS
    from lorascope.lora import INITS
    from lorascope.models import MODELS
    from lorascope.train import OPTIMIZERS, SCHEDULES

    return [INITS, OPTIMIZERS, SCHEDULES, MODELS, SOURCES, TASKS]


@pytest.mark.parametrize("registry", _training_registries(), ids=lambda r: r.kind)
def test_every_declared_name_is_implemented_by_its_provider(registry):
    registry.load()  # raises when the provider misses a declared name
    for name in registry.names():
        assert registry.get(name) is not None
        assert registry.description(name) and "\n" not in registry.description(name)


def test_the_front_doors_are_light_and_keep_every_public_name():
    code = (
        "import sys, importlib\n"
        "for p in ('lorascope.lora', 'lorascope.models', 'lorascope.data', 'lorascope.train', 'lorascope.record'):\n"
        "    importlib.import_module(p)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'datasets', 'numpy', 'h5py'}))\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    import importlib

    for package in ("lorascope.lora", "lorascope.models", "lorascope.data", "lorascope.record"):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
