"""Kernel loading: entry points, switches, tracing, load errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import attrs
import pytest

import laden
from laden.errors import PluginLoadError
from laden.kinds import KINDS


def _declared_entry_points() -> dict[str, str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    return dict(data["project"]["entry-points"]["laden"])


# Every builtin plugin module is declared in pyproject.toml (test_meta checks the
# modules on disk against it); the kernel must load exactly those.
BUILTINS = set(_declared_entry_points())


def make_dist(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution on ``root`` (dist-info + modules)."""
    info = root / f"{dist.replace('-', '_')}-0.3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[laden]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


GOOD_PLUGIN = """
    from typing import ClassVar
    import attrs
    import laden

    @attrs.frozen(kw_only=True)
    class Shout:
        name: ClassVar[str] = "shout"

    @laden.hookimpl
    def laden_register_tokenizers(registry):
        registry.add(Shout)
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_dist(
        tmp_path,
        "laden-shout",
        {"shout": "laden_shout_plugin"},
        {"laden_shout_plugin": GOOD_PLUGIN},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("laden_shout_plugin", None)


def test_builtins_are_entry_points(kernel: laden.Kernel) -> None:
    infos = {p.name: p for p in kernel.plugins()}
    assert set(infos) == BUILTINS
    for info in infos.values():
        assert info.distribution == "laden"
        assert info.entry_point is not None
        assert info.entry_point.startswith(("laden.plugins.", "laden.contrib."))
    assert infos["bytes"].strategies == {"tokenizer": ("bytes",)}
    assert infos["local"].strategies == {"executor": ("local",)}


def test_autoload_loads_third_party(third_party: Path) -> None:
    kernel = laden.Kernel()
    assert "shout" in kernel.registry("tokenizer")
    info = {p.name: p for p in kernel.plugins()}["shout"]
    assert (info.distribution, info.version) == ("laden-shout", "0.3.0")


def test_no_autoload_keeps_only_builtins(
    third_party: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "shout" not in laden.Kernel(autoload=False).registry("tokenizer")
    monkeypatch.setenv("LADEN_NO_AUTOLOAD", "1")
    kernel = laden.Kernel()
    assert "shout" not in kernel.registry("tokenizer")
    assert "bytes" in kernel.registry("tokenizer")


def test_disable_by_entry_point_name(third_party: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "shout" not in laden.Kernel(disable=["shout"]).registry("tokenizer")
    monkeypatch.setenv("LADEN_DISABLE_PLUGINS", "shout, whitespace")
    kernel = laden.Kernel()
    names = kernel.registry("tokenizer").names()
    assert names == ["bytes", "hf"]
    assert kernel.disabled == {"shout", "whitespace"}


def test_broken_plugin_names_entry_point_and_dist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dist(
        tmp_path,
        "laden-broken",
        {"broken": "laden_broken_plugin"},
        {"laden_broken_plugin": "import laden_missing_dependency_abc\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError) as info:
        laden.Kernel()
    message = str(info.value)
    assert 'error importing plugin "broken" (from dist laden-broken)' in message
    assert "laden_missing_dependency_abc" in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    # The switch users are told about does work around it.
    assert "broken" not in {p.name for p in laden.Kernel(disable=["broken"]).plugins()}


def test_misspelt_hook_is_an_error(make_kernel) -> None:  # type: ignore[no-untyped-def]
    class Typo:
        @laden.hookimpl
        def laden_register_sampler(self, registry: laden.Registry) -> None:  # no "s"
            raise AssertionError("never called")

    with pytest.raises(PluginLoadError, match="laden_register_sampler"):
        make_kernel(plugins=[Typo()])


def test_explicit_plugins_after_entry_points(make_kernel) -> None:  # type: ignore[no-untyped-def]
    @attrs.frozen
    class Mine:
        name: ClassVar[str] = "mine"

    class Plugin:
        @laden.hookimpl
        def laden_register_generators(self, registry: laden.Registry) -> None:
            registry.add(Mine)

    before = set(make_kernel().registry("generator").names())
    kernel = make_kernel(plugins=[Plugin()])
    names = set(kernel.registry("generator").names())
    assert {"gabor", "gaussian", "moving_gaussian"} <= before
    assert names == before | {"mine"}  # the entry points' generators + the explicit one


def test_every_kind_has_a_registry(kernel: laden.Kernel) -> None:
    for kind in KINDS:
        assert kernel.registry(kind).kind == kind
    assert {"bytes", "hf", "whitespace"} <= set(kernel.registry("tokenizer").names())
    assert {"fixed", "token_budget"} <= set(kernel.registry("sampler").names())
    assert {"jsonl", "mock", "puzzle_arcade", "telnet"} <= set(kernel.registry("source").names())


def test_trace_hooks_writes_calls(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LADEN_TRACE_HOOKS", "1")
    kernel = laden.Kernel(autoload=False)
    kernel.registry("tokenizer")
    err = capfd.readouterr().err
    assert "laden_register_tokenizers [bytes]" in err
    assert "laden_register_tokenizers [whitespace]" in err


def test_default_kernel_is_created_once() -> None:
    assert laden.default_kernel() is laden.default_kernel()
