"""Resolving the ``env`` and ``policy`` settings, and making the runner for an env's backend."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from laden.errors import ConfigError, LadenError
from laden.stream.envs.base import BatchedEnv, load_object
from laden.stream.envs.runner import EnvRunner, check_num_envs

__all__ = ["ALIASES", "ARRAY_BACKENDS", "make_env", "make_runner", "require", "resolve_policy"]

#: Short names for bundled envs.
ALIASES = {"grid": "laden.contrib.grid_env:make", "grid_torch": "laden.contrib.grid_env:make_torch"}
ARRAY_BACKENDS = ("numpy", "torch", "jax")
_GYM_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+-v\d+$")


def require(array_backend: str) -> None:
    """A ConfigError naming ``array_backend`` and the extra to install when it is missing."""
    if array_backend not in ARRAY_BACKENDS:
        raise ConfigError(
            f"must be one of {', '.join(ARRAY_BACKENDS)}, got {array_backend!r}",
            path=("array_backend",),
        )
    if array_backend == "numpy":
        return
    try:
        __import__(array_backend)
    except ImportError:
        raise ConfigError(
            f"{array_backend!r} needs {array_backend}, which is not installed; run: "
            f'pip install "laden[{array_backend}]"',
            path=("array_backend",),
        ) from None


def _call(
    factory: Callable[..., Any], offered: Mapping[str, Any], options: Mapping[str, Any]
) -> Any:
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    chosen = {k: v for k, v in offered.items() if takes_all or k in params}
    return factory(**chosen, **options)


def make_env(
    env: str | Callable[..., Any],
    *,
    num_envs: int,
    array_backend: str = "numpy",
    options: Mapping[str, Any] | None = None,
) -> BatchedEnv:
    """The batched env the ``env`` setting names.

    ``env`` is a bundled name (``grid``), ``gym:ID`` or a gymnasium id
    (``CartPole-v1``, through :mod:`laden.contrib.gym_adapter`), an entry point
    ``pkg.mod:factory``, or a factory. A factory is called with the keywords it
    takes among ``num_envs`` and ``backend``, plus ``options``.
    """
    num_envs = check_num_envs(num_envs)
    require(array_backend)
    options = dict(options or {})
    where = env if isinstance(env, str) else getattr(env, "__qualname__", repr(env))
    if isinstance(env, str):
        name = ALIASES.get(env, env)
        if name.startswith("gym:") or (":" not in name and _GYM_ID.match(name)):
            options = {"env_id": name.removeprefix("gym:"), **options}
            name = "laden.contrib.gym_adapter:make"
        if ":" not in name:
            raise ConfigError(
                f"must be a bundled env ({', '.join(ALIASES)}), 'gym:ID', a gymnasium id "
                f"or 'pkg.module:factory', got {env!r}",
                path=("env",),
            )
        factory = load_object(name, setting="env")
    else:
        factory = env
    backend = "jax" if array_backend == "jax" else "numpy"
    try:
        made = _call(factory, {"num_envs": num_envs, "backend": backend}, options)
    except LadenError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"the env factory {where!r} raised {type(exc).__name__}: {exc}", path=("env",)
        ) from exc
    missing = [a for a in ("spec", "reset", "step") if not hasattr(made, a)]
    if missing:
        raise ConfigError(
            f"{where!r} made {type(made).__name__}, which has no {', '.join(missing)} "
            "(a batched env has spec, reset(keys) and step(state, action))",
            path=("env",),
        )
    return made  # type: ignore[no-any-return]


def resolve_policy(policy: str | Callable[..., Any]) -> str | Callable[..., Any]:
    """``random``, an entry point ``pkg.mod:name`` or a callable."""
    if callable(policy) or policy == "random":
        return policy
    if ":" not in policy:
        raise ConfigError(
            f"must be 'random' or 'pkg.module:name', got {policy!r}", path=("policy",)
        )
    found = load_object(policy, setting="policy")
    if not callable(found):
        raise ConfigError(f"{policy!r} is not callable", path=("policy",))
    return found  # type: ignore[no-any-return]


def make_runner(env: BatchedEnv, **settings: Any) -> Any:
    """An :class:`EnvRunner` for numpy and torch envs, a :class:`~.jaxrun.JaxRunner` for JAX."""
    if "policy" in settings:
        settings["policy"] = resolve_policy(settings["policy"])
    if getattr(env, "backend", "numpy") == "jax":
        from laden.stream.envs.jaxrun import JaxRunner

        return JaxRunner(env, **settings)
    settings.pop("scan", None)
    return EnvRunner(env, **settings)
