"""Vectorized environments: the batched env protocol, per-env keys, the rollout runner.

Re-exports only; see the modules for details.
"""

from laden.stream.envs.base import (
    EPISODE_STRIDE,
    BatchedEnv,
    EnvSpec,
    EnvStepError,
    Policy,
    env_keys,
    fold,
)
from laden.stream.envs.files import RolloutReader, read_rollouts, write_rollouts
from laden.stream.envs.runner import AUTORESETS, EnvRunner, Rollout, random_policy

__all__ = [
    "AUTORESETS",
    "EPISODE_STRIDE",
    "BatchedEnv",
    "EnvRunner",
    "EnvSpec",
    "EnvStepError",
    "Policy",
    "Rollout",
    "RolloutReader",
    "env_keys",
    "fold",
    "random_policy",
    "read_rollouts",
    "write_rollouts",
]
