"""``env_batch``: rollouts of many environments stepped in lockstep, as a stream source.

Iterating the source gives stream samples (transitions, or trajectory slices
that never cross an episode boundary), the input of :class:`laden.stream.ReplayBuffer`;
:meth:`EnvBatchSource.rollouts` gives the rollout chunks themselves, ``[T, N, ...]``
arrays with per-episode statistics. Env ``i``'s stream depends on ``(seed, i)``
only. See ``docs/envs.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import attrs

from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.stream.envs.make import ARRAY_BACKENDS, make_env, make_runner, require
from laden.stream.envs.runner import AUTORESETS, Rollout
from laden.validators import at_least, one_of, optional, positive

__all__ = ["EnvBatchSource"]


@attrs.frozen(kw_only=True)
class EnvBatchSource:
    """Vectorized env rollouts.

    :param env: ``grid`` (bundled), ``gym:ID`` or a gymnasium id, or ``pkg.mod:factory``.
    :param env_options: keywords for the env factory (``{"height": 8}``).
    :param num_envs: envs stepped together.
    :param seed: env ``i``'s keys derive from ``(seed, i)`` only.
    :param rollout_len: steps per rollout chunk (``T``).
    :param policy: ``random`` or ``pkg.mod:name``, a callable ``policy(obs, keys, spec) -> action``.
    :param autoreset: ``next_step``, ``same_step``, ``disabled`` or ``pool``.
    :param reset_pool_size: precomputed reset states for ``pool``.
    :param array_backend: ``numpy``, ``torch`` (extra torch) or ``jax`` (extra jax).
    :param max_steps: steps of every env in all (None: endless); the last chunk may be shorter.
    :param emit: what iterating yields: ``transition`` or ``trajectory`` samples.
    :param slice_len: steps per trajectory sample at most.
    :param final_obs: record the terminal observation of envs reset within a step.
    :param first_env: the index of the first env (to run envs ``first_env ...`` on one host).
    :param scan: on JAX, run each chunk as one ``lax.scan``.
    """

    name: ClassVar[str] = "env_batch"

    env: str = "grid"
    env_options: dict[str, Any] = attrs.field(factory=dict)
    num_envs: int = attrs.field(default=16, validator=positive)
    seed: int = attrs.field(default=0, validator=at_least(0))
    rollout_len: int = attrs.field(default=64, validator=positive)
    policy: str = "random"
    autoreset: str = attrs.field(default="next_step", validator=one_of(*AUTORESETS))
    reset_pool_size: int = attrs.field(default=64, validator=positive)
    array_backend: str = attrs.field(default="numpy", validator=one_of(*ARRAY_BACKENDS))
    max_steps: int | None = attrs.field(default=None, validator=optional(positive))
    emit: str = attrs.field(default="transition", validator=one_of("transition", "trajectory"))
    slice_len: int = attrs.field(default=16, validator=positive)
    final_obs: bool = True
    first_env: int = attrs.field(default=0, validator=at_least(0))
    scan: bool = True

    def make_env(self) -> Any:
        """The batched env (a ConfigError names ``env`` when its factory fails)."""
        return make_env(
            self.env,
            num_envs=self.num_envs,
            array_backend=self.array_backend,
            options=self.env_options,
        )

    def runner(self) -> Any:
        """A fresh runner at step 0."""
        require(self.array_backend)
        return make_runner(
            self.make_env(),
            num_envs=self.num_envs,
            seed=self.seed,
            policy=self.policy,
            autoreset=self.autoreset,
            reset_pool_size=self.reset_pool_size,
            final_obs=self.final_obs,
            first_env=self.first_env,
            scan=self.scan,
        )

    def rollouts(self, *, numpy: bool = False) -> Iterator[Rollout]:
        """Rollout chunks of ``rollout_len`` steps, in ``array_backend`` arrays (or numpy)."""
        runner = self.runner()
        done = 0
        while self.max_steps is None or done < self.max_steps:
            steps = self.rollout_len
            if self.max_steps is not None:
                steps = min(steps, self.max_steps - done)
            rollout = runner.rollout(steps)
            done += steps
            yield rollout.numpy() if numpy else rollout.to(self.array_backend)

    def chunks(self) -> Iterator[dict[str, Any]]:
        """The rollout chunks as dicts (columns, ``last_obs``, ``episodes``)."""
        for rollout in self.rollouts():
            yield rollout.as_dict()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Stream samples: ``emit`` transitions or trajectory slices of every chunk."""
        for rollout in self.rollouts(numpy=True):
            yield from rollout.samples(self.emit, slice_len=self.slice_len)


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(EnvBatchSource)
