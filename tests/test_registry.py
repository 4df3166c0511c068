"""Registries: add, get, names, duplicates, availability."""

from __future__ import annotations

from typing import ClassVar

import attrs
import pytest

import laden
from laden.errors import (
    DuplicateStrategyError,
    MissingDependencyError,
    RegistryError,
    UnknownStrategyError,
)
from laden.registry import Registry
from laden.testing import registered


@attrs.frozen(kw_only=True)
class Alpha:
    name: ClassVar[str] = "alpha"
    size: int = 1


@attrs.frozen(kw_only=True)
class Beta:
    name: ClassVar[str] = "beta"


@attrs.frozen(kw_only=True)
class NeedsMissing:
    name: ClassVar[str] = "needs_missing"
    requires: ClassVar[tuple[str, ...]] = ("laden_no_such_module_xyz",)
    extra: ClassVar[str] = "hf"


def test_add_get_names_sorted() -> None:
    registry = Registry("sampler")
    registry.add(Beta)
    registry.add(Alpha)
    assert registry.names() == ["alpha", "beta"]
    assert registry.get("alpha") is Alpha
    assert "beta" in registry
    assert len(registry) == 2
    assert [e.name for e in registry] == ["alpha", "beta"]


def test_unknown_name_lists_known() -> None:
    registry = Registry("sampler")
    registry.add(Alpha)
    registry.add(Beta)
    with pytest.raises(UnknownStrategyError) as info:
        registry.get("gamma")
    assert "unknown sampler 'gamma'" in str(info.value)
    assert "'alpha', 'beta'" in str(info.value)


def test_duplicate_names_are_rejected_naming_both_plugins() -> None:
    registry = Registry("sampler")
    registry._plugin = "first"
    registry.add(Alpha)

    @attrs.frozen
    class AlphaAgain:
        name: ClassVar[str] = "alpha"

    registry._plugin = "second"
    with pytest.raises(DuplicateStrategyError) as info:
        registry.add(AlphaAgain)
    message = str(info.value)
    assert "'first'" in message
    assert "'second'" in message
    assert registry.get("alpha") is Alpha


@pytest.mark.parametrize("bad_name", [None, "", "has space", 3])
def test_class_needs_identifier_name(bad_name: object) -> None:
    cls = attrs.frozen(type("Nameless", (), {"name": bad_name}))
    with pytest.raises(RegistryError, match="needs a class attribute `name`"):
        Registry("sampler").add(cls)


def test_class_must_be_attrs() -> None:
    class Plain:
        name: ClassVar[str] = "plain"

    with pytest.raises(RegistryError, match="must be an attrs class"):
        Registry("sampler").add(Plain)


def test_missing_extra_is_listed_unavailable_and_get_says_what_to_install() -> None:
    registry = Registry("tokenizer")
    registry.add(NeedsMissing)
    registry.add(Alpha)
    assert registry.names() == ["alpha", "needs_missing"]
    assert registry.names(available_only=True) == ["alpha"]
    entry = registry.entry("needs_missing")
    assert not entry.available
    assert entry.missing == ("laden_no_such_module_xyz",)
    with pytest.raises(MissingDependencyError) as info:
        registry.get("needs_missing")
    assert 'pip install "laden[hf]"' in str(info.value)
    assert isinstance(info.value, ImportError)


class _Plugin:
    @laden.hookimpl
    def laden_register_samplers(self, registry: Registry) -> None:
        registry.add(Alpha)

    @laden.hookimpl
    def laden_register_tokenizers(self, registry: Registry) -> None:
        registry.add(NeedsMissing)


def test_kernel_registry_records_the_plugin(kernel: laden.Kernel) -> None:
    with registered(kernel, _Plugin(), name="mine"):
        assert kernel.registry("sampler").entry("alpha").plugin == "mine"
        info = {p.name: p for p in kernel.plugins()}["mine"]
        assert info.strategies == {"sampler": ("alpha",), "tokenizer": ("needs_missing",)}
        with pytest.raises(MissingDependencyError):
            kernel.create("tokenizer", "needs_missing")
    assert "alpha" not in kernel.registry("sampler")
    assert "mine" not in {p.name for p in kernel.plugins()}


def test_registered_unregisters_even_on_error(kernel: laden.Kernel) -> None:
    plugin = _Plugin()

    def fail_inside() -> None:
        with registered(kernel, plugin):
            assert "alpha" in kernel.registry("sampler")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert not kernel.pm.is_registered(plugin)
    assert "alpha" not in kernel.registry("sampler")


def test_duplicate_across_plugins_is_an_error(kernel: laden.Kernel) -> None:
    with (
        registered(kernel, _Plugin(), name="one"),
        registered(kernel, _Plugin(), name="two"),
        pytest.raises(DuplicateStrategyError, match=r"'one'.*'two'"),
    ):
        kernel.registry("sampler")


def test_unknown_kind(kernel: laden.Kernel) -> None:
    with pytest.raises(laden.ConfigError, match="unknown plugin kind 'samplerz'"):
        kernel.registry("samplerz")


REGISTRATION_HOOKS = {
    "tokenizer": "laden_register_tokenizers",
    "packer": "laden_register_packers",
    "sampler": "laden_register_samplers",
    "source": "laden_register_sources",
    "writer": "laden_register_writers",
    "backend": "laden_register_backends",
    "executor": "laden_register_executors",
    "generator": "laden_register_generators",
}


@pytest.mark.parametrize(("kind", "hook"), sorted(REGISTRATION_HOOKS.items()))
def test_each_registration_hook_fills_its_kind_only(
    kernel: laden.Kernel, kind: str, hook: str
) -> None:
    @attrs.frozen
    class Probe:
        name: ClassVar[str] = f"probe_{kind}"

    def register(registry: Registry) -> None:
        registry.add(Probe)

    register.__name__ = hook
    plugin = type("ProbePlugin", (), {hook: staticmethod(laden.hookimpl(register))})()
    assert set(REGISTRATION_HOOKS) == set(laden.KINDS)
    with registered(kernel, plugin):
        for other in laden.KINDS:
            assert (f"probe_{kind}" in kernel.registry(other)) == (other == kind)
