"""Meta-tests: the project keeps its own rules."""

from __future__ import annotations

import inspect
import pkgutil
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

import laden
import laden.contrib
import laden.plugins
from laden import hookspecs

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("torch", "mlx", "h5py", "ray", "tokenizers", "matplotlib", "jax", "gymnasium")


def all_modules() -> list[str]:
    names = ["laden"]
    for package in (laden, laden.plugins, laden.contrib):
        prefix = package.__name__ + "."
        names += [m.name for m in pkgutil.walk_packages(package.__path__, prefix)]
        names.append(package.__name__)
    return sorted(set(names) - {"laden.__main__"})


def plugin_modules() -> set[str]:
    return {
        m.name
        for package in (laden.plugins, laden.contrib)
        for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if not m.ispkg
    }


def test_every_module_imports_without_extras_under_W_error() -> None:
    # A meta-path finder refuses the extras, as on a machine without them.
    script = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            raise ImportError("blocked extra: " + name)
sys.meta_path.insert(0, Block())
for name in {all_modules()!r}:
    importlib.import_module(name)
loaded = sorted(m for m in {EXTRAS!r} if m in sys.modules)
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_import_laden_pulls_no_heavy_dependency() -> None:
    script = f"import sys, laden; print([m for m in {EXTRAS!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_plugin_module_has_an_entry_point_and_vice_versa() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["laden"]
    assert set(declared.values()) == plugin_modules()
    installed = {
        ep.name: ep.value
        for ep in metadata.entry_points(group="laden")
        if ep.dist is not None and ep.dist.name == "laden"
    }
    assert installed == declared, "reinstall laden: its installed entry points are stale"


def test_every_plugin_module_implements_a_hook() -> None:
    for name in plugin_modules():
        module = __import__(name, fromlist=["_"])
        impls = [
            n
            for n, f in vars(module).items()
            if n.startswith("laden_") and hasattr(f, "laden_impl")
        ]
        assert impls, f"{name} implements no laden hook"


def hook_specs() -> list[str]:
    return sorted(
        n for n, f in vars(hookspecs).items() if n.startswith("laden_") and hasattr(f, "laden_spec")
    )


def test_every_hook_spec_is_documented_and_tested() -> None:
    docs = (ROOT / "docs" / "hooks.md").read_text()
    tests = "".join(
        p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_meta.py"
    )
    for name in hook_specs():
        assert f"## `{name}`" in docs, f"{name} is not documented in docs/hooks.md"
        assert name in tests, f"{name} has no test"


def test_hook_spec_docstrings_follow_the_style() -> None:
    for name in hook_specs():
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert re.search(r"^Result: ", doc, re.M), name
        assert re.search(r"^Called: ", doc, re.M), name
        params = inspect.signature(getattr(hookspecs, name)).parameters
        for param in params:
            assert f":param {param}:" in doc, f"{name} does not document {param}"


def test_top_level_layout() -> None:
    visible = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    tracked = set(
        subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    )
    top = {t.split("/")[0] for t in tracked if not t.startswith(".")} or visible
    assert top == {
        "core",
        "plugins",
        "contrib",
        "tests",
        "docs",
        "benchmarks",
        "tox.ini",
        "pyproject.toml",
        "README.md",
        "LICENSE",
    }


def _package_folders() -> set[str]:
    """Every folder with an ``__init__.py`` under core/, plugins/, contrib/, as a package name."""
    roots = {"core": "laden", "plugins": "laden.plugins", "contrib": "laden.contrib"}
    names = set()
    for folder, package in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in parts:
                names.add(".".join((package, *parts)))
    return names


def test_the_wheel_lists_every_package() -> None:
    # A subpackage missing from [tool.setuptools] packages is left out of the wheel while
    # the editable install still imports it: the list must equal the folders on disk.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(pyproject["tool"]["setuptools"]["packages"]) == _package_folders()
