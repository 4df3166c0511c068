"""The kernel: one pluggy manager, its plugins and a registry per kind."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

import attrs
import cattrs
import pluggy

from laden import hookspecs
from laden.errors import ConfigError, PluginLoadError
from laden.kinds import KINDS, hook_name
from laden.registry import Registry
from laden.serde import make_converter, structure_config

__all__ = ["Kernel", "PluginInfo", "builtin_kernel", "default_kernel"]

BUILTIN_DIST = "laden"


@attrs.frozen(kw_only=True)
class PluginInfo:
    """What ``laden plugins`` shows of one plugin."""

    name: str
    entry_point: str | None
    distribution: str | None
    version: str | None
    strategies: Mapping[str, tuple[str, ...]]


def _env_list(var: str) -> set[str]:
    return {p.strip() for p in os.environ.get(var, "").split(",") if p.strip()}


def _env_flag(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no")


def _dist_name(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else None


class Kernel:
    """Owns one pluggy manager and the strategy registries built from its plugins.

    Loading order: every entry point of group ``laden`` (laden's builtins are
    entry points too), then ``plugins``, then ``check_pending()`` so a hook
    implementation without a spec is an error.

    :param autoload: load third-party entry points; False (or
        ``LADEN_NO_AUTOLOAD=1``) loads only laden's own builtins.
    :param disable: entry-point names to skip, added to ``LADEN_DISABLE_PLUGINS``.
    :param plugins: plugin objects (modules, instances) to register explicitly.
    """

    def __init__(
        self,
        *,
        autoload: bool = True,
        disable: Iterable[str] = (),
        plugins: Sequence[object] = (),
    ) -> None:
        self.pm = pluggy.PluginManager("laden")
        self.pm.add_hookspecs(hookspecs)
        self.autoload = autoload and not _env_flag("LADEN_NO_AUTOLOAD")
        self.disabled = frozenset(disable) | _env_list("LADEN_DISABLE_PLUGINS")
        self._entry_points: dict[str, metadata.EntryPoint] = {}
        self._registries: dict[str, Registry] = {}
        self._converter: cattrs.Converter | None = None
        self.trace = _env_flag("LADEN_TRACE_HOOKS")
        if self.trace:
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()
        self._load_entry_points()
        for plugin in plugins:
            self.register(plugin)
        self._check()

    # ------------------------------------------------------------ plugins

    def _load_entry_points(self) -> None:
        for ep in sorted(metadata.entry_points(group="laden"), key=lambda e: e.name):
            dist = _dist_name(ep)
            if ep.name in self.disabled or ep.name in self._entry_points:
                continue
            if not self.autoload and dist != BUILTIN_DIST:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginLoadError(
                    f'error importing plugin "{ep.name}" (from dist {dist or "unknown"}): '
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._entry_points[ep.name] = ep
            self.register(plugin, name=ep.name)

    def _check(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(f'plugin "{exc.plugin}" failed validation: {exc}') from exc

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object; registries are rebuilt on next use."""
        try:
            registered = self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            label = name or getattr(plugin, "__name__", repr(plugin))
            raise PluginLoadError(f'plugin "{label}" could not be registered: {exc}') from exc
        assert registered is not None  # pluggy returns None only for blocked names
        self._invalidate()
        return registered

    def unregister(self, plugin: object) -> None:
        """Unregister a plugin object; registries are rebuilt on next use."""
        self.pm.unregister(plugin)
        self._invalidate()

    def _invalidate(self) -> None:
        self._registries.clear()
        self._converter = None

    @property
    def hook(self) -> pluggy.HookRelay:
        """The hook relay, to call lifecycle hooks."""
        return self.pm.hook

    # --------------------------------------------------------- registries

    def registry(self, kind: str) -> Registry:
        """The registry of ``kind``, filled by every plugin's registration hook."""
        if kind not in KINDS:
            raise ConfigError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        if kind not in self._registries:
            registry = Registry(kind)
            caller = getattr(self.pm.hook, hook_name(kind))
            for impl in caller.get_hookimpls():
                registry._plugin = impl.plugin_name
                if self.trace:
                    sys.stderr.write(f"{hook_name(kind)} [{impl.plugin_name}]\n")
                impl.function(**{arg: registry for arg in impl.argnames})
            registry._plugin = None
            self._registries[kind] = registry
        return self._registries[kind]

    @property
    def converter(self) -> cattrs.Converter:
        """The private, strict cattrs converter of this kernel."""
        if self._converter is None:
            self._converter = make_converter()
        return self._converter

    def create(
        self, kind: str, config: Mapping[str, Any] | str, *, path: Sequence[str | int] = ()
    ) -> Any:
        """Build a strategy from ``{"name": ..., **settings}`` (or just a name).

        Errors name the key path, e.g. ``sampler.token_budget: must be > 0, got -5``;
        ``path`` defaults to ``(kind,)``.
        """
        where = tuple(path) or (kind,)
        if isinstance(config, str):
            config = {"name": config}
        if not isinstance(config, Mapping):
            raise ConfigError(f"expected a table with a 'name' key, got {config!r}", path=where)
        name = config.get("name")
        registry = self.registry(kind)
        if name is None:
            known = ", ".join(repr(n) for n in registry.names()) or "none"
            raise ConfigError(f"missing 'name'; known {kind}s: {known}", path=where)
        if not isinstance(name, str) or name not in registry:
            known = ", ".join(repr(n) for n in registry.names()) or "none"
            raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {known}", path=where)
        cls = registry.get(name)  # MissingDependencyError names the extra
        settings = {k: v for k, v in config.items() if k != "name"}
        return structure_config(self.converter, settings, cls, path=where)

    # ------------------------------------------------------------ listing

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin with the strategies it provides, by kind."""
        provided: dict[str, dict[str, list[str]]] = {}
        for kind in KINDS:
            for entry in self.registry(kind):
                by_kind = provided.setdefault(entry.plugin or "?", {})
                by_kind.setdefault(kind, []).append(entry.name)
        out = []
        for name, _plugin in self.pm.list_name_plugin():
            ep = self._entry_points.get(name)
            dist = ep.dist if ep is not None else None
            out.append(
                PluginInfo(
                    name=name,
                    entry_point=ep.value if ep is not None else None,
                    distribution=dist.name if dist is not None else None,
                    version=dist.version if dist is not None else None,
                    strategies={k: tuple(v) for k, v in provided.get(name, {}).items()},
                )
            )
        return sorted(out, key=lambda p: p.name)

    # --------------------------------------------------------- lifecycle

    def plan_epoch(self, sampler: Any, table: Any, *, epoch: int = 0, seed: int = 0) -> Any:
        """``sampler.plan_epoch(table, ...)``, announced through ``laden_plan_built``."""
        plan = sampler.plan_epoch(table, epoch=epoch, seed=seed)
        self.hook.laden_plan_built(plan=plan, kernel=self)
        return plan

    def __repr__(self) -> str:
        names = ", ".join(sorted(n for n, _ in self.pm.list_name_plugin()))
        return f"<Kernel plugins: {names}>"


def builtin_kernel() -> Kernel:
    """A new kernel with laden's own builtin plugins only (``autoload=False``).

    What library code falls back on when its caller passed neither ``kernel=``
    nor the strategy: the ``numpy`` backend, the ``local`` executor, the writer
    a manifest names. It never imports a third-party distribution and keeps no
    process-wide state; pass ``kernel=`` to use other plugins.
    """
    return Kernel(autoload=False)


_default: Kernel | None = None


def default_kernel() -> Kernel:
    """A process-wide kernel with every installed plugin, created on first use.

    The convenience layer for scripts and notebooks: library code never calls it
    (it takes ``kernel=`` or falls back on :func:`builtin_kernel`), and tests
    build their own ``Kernel``.
    """
    global _default
    if _default is None:
        _default = Kernel()
    return _default
