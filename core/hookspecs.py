"""The hook specifications of laden (project name ``laden``).

Plugins implement these with ``@laden.hookimpl``. A misspelt hook name is an
error when the kernel loads the plugin (``check_pending``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from laden.kernel import Kernel
    from laden.registry import Registry

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("laden")
hookimpl = pluggy.HookimplMarker("laden")


# ---------------------------------------------------------------- registration
# One hook per plugin kind. Each receives the kind's registry; call
# ``registry.add(cls)`` for every strategy the plugin provides.


@hookspec
def laden_register_tokenizers(registry: Registry) -> None:
    """Register tokenizer strategies (text -> token ids and lengths).

    :param registry: the tokenizer registry; call ``registry.add(cls)``.

    Result: none.
    Called: once per kernel, the first time its tokenizer registry is needed.
    """


@hookspec
def laden_register_packers(registry: Registry) -> None:
    """Register packer strategies (length table -> packs of segments).

    :param registry: the packer registry; call ``registry.add(cls)``.

    Result: none.
    Called: once per kernel, the first time its packer registry is needed.
    """


@hookspec
def laden_register_samplers(registry: Registry) -> None:
    """Register sampler strategies (length table -> batches of an epoch).

    :param registry: the sampler registry; call ``registry.add(cls)``.

    Result: none.
    Called: once per kernel, the first time its sampler registry is needed.
    """


@hookspec
def laden_register_sources(registry: Registry) -> None:
    """Register source strategies (files, streams -> samples).

    :param registry: the source registry; call ``registry.add(cls)``.

    Result: none.
    Called: once per kernel, the first time its source registry is needed.
    """


@hookspec
def laden_register_writers(registry: Registry) -> None:
    """Register writer strategies (batches -> files, with a reader half).

    :param registry: the writer registry; call ``registry.add(cls)``.

    Result: none.
    Called: once per kernel, the first time its writer registry is needed.
    """


@hookspec
def laden_register_backends(registry: Registry) -> None:
    """Register backend strategies (host arrays -> framework arrays on a device).

    :param registry: the backend registry; call ``registry.add(cls)``.

    Result: none.
    Called: once per kernel, the first time its backend registry is needed.
    """


@hookspec
def laden_register_executors(registry: Registry) -> None:
    """Register executor strategies (a map of work over processes or a cluster).

    :param registry: the executor registry; call ``registry.add(cls)``.

    Result: none.
    Called: once per kernel, the first time its executor registry is needed.
    """


@hookspec
def laden_register_generators(registry: Registry) -> None:
    """Register generator strategies (parameters + seed -> one generated sample).

    :param registry: the generator registry; call ``registry.add(cls)``.

    Result: none.
    Called: once per kernel, the first time its generator registry is needed.
    """


# ------------------------------------------------------------------------- CLI


@hookspec
def laden_add_commands(cli: click.Group, kernel: Kernel) -> None:
    """Add subcommands to the ``laden`` command line.

    :param cli: the top-level click group; call ``cli.add_command(command)``.
    :param kernel: the kernel the CLI runs with.

    Result: none.
    Called: once, when ``laden`` starts, after every plugin is loaded.
    """


# ------------------------------------------------------------------- lifecycle
# Observers: metrics, logging, audit trails. They must not change what they see.


@hookspec
def laden_plan_built(plan: Any, kernel: Kernel) -> None:
    """A plan of batches was built: an epoch plan or a whole batch plan.

    :param plan: the new plan (an ``EpochPlan`` or ``BatchPlan``; read-only).
    :param kernel: the kernel that built it.

    Result: none.
    Called: after ``Kernel.plan_epoch`` or ``BatchPlan.build`` finishes, once per plan.
    """


@hookspec
def laden_batch_produced(batch: Any, epoch: int, step: int, kernel: Kernel) -> None:
    """A batch was handed to the consumer (collated, on its backend).

    :param batch: the batch mapping, as the consumer receives it (read-only).
    :param epoch: the epoch of the batch.
    :param step: the step (batch index) within the epoch.
    :param kernel: the kernel that produced it.

    Result: none.
    Called: once per batch, by laden's loaders and readers, just before yielding it.
    """
