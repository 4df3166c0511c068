"""Rollouts to files: a file per rollout chunk through a writer plugin, a manifest, resumable.

:func:`write_rollouts` runs an ``env_batch`` source for ``chunks`` rollout
chunks and writes chunk ``k`` to ``rollout-0000k.<suffix>`` (``npz``, ``pt``
or ``h5``), readable with plain ``np.load``, ``torch.load(...,
weights_only=True)`` or ``h5py``. Each file holds the chunk's ``[T, N, ...]``
columns (``obs``, ``action``, ``reward``, ``terminated``, ``truncated``,
``episode_id``, ``step_index``, ``active``, ``final_obs`` and ``final_mask``
when recorded), ``last_obs`` ``[N, ...]``, the episodes that ended in it
(``episodes.env``, ``episodes.episode_id``, ``episodes.return``,
``episodes.length``, ``episodes.terminated``) and 0-d ``chunk``, ``start``
(the global step of row 0) and ``first_env``.

The run is a :class:`~laden.files.manifest.RunManifest` of kind
``laden.rollouts``: its identity is the source's config and the writer's, and
each chunk's record holds the file's checksums, a content digest (the same
whatever the writer), the chunk's episode statistics, and the runner's state
after the chunk (``state-0000k.npz``, :meth:`EnvRunner.state_dict`, or
:meth:`JaxRunner.state_dict` on JAX). Resume
(``--resume``, after a crash, ``kill -9`` or Ctrl-C) re-checks the kept
files, loads the runner state of the last chunk of the unbroken run of kept
chunks and goes on from there, so the files are byte for byte those of an
uninterrupted run. Where no saved state can be used (an env that keeps its
state inside its own objects, a state file lost) the kept
chunks are computed again and compared with their recorded digests.

:func:`read_rollouts` reads the chunks back in order, checking each file's
size and checksum against the manifest: a damaged file is a DataError naming
it, never data.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from laden.digest import content_digest
from laden.errors import ConfigError, DataError
from laden.files.manifest import RunManifest, file_problem, file_record, load_manifest
from laden.io import artifact_kind, atomic_open, plain_json, prepare_output
from laden.serde import config_of
from laden.stream.envs.base import tree_map

if TYPE_CHECKING:
    from laden.kernel import Kernel
    from laden.stream.envs.runner import Rollout

__all__ = ["KIND", "RolloutReader", "chunk_arrays", "chunk_name", "read_rollouts", "write_rollouts"]

#: The artifact kind of a rollout file directory.
KIND = "laden.rollouts"
FORMAT_VERSION = 1
_PREFIX, _STATE = "rollout-", "state-"
#: Runner-state fields stored as arrays (the rest of a state is its identity, kept as JSON).
_COUNTERS = ("episode", "ep_step", "ep_return", "pending", "alive")


def chunk_name(chunk: int, suffix: str) -> str:
    """``rollout-000042.npz``: sorts in chunk order."""
    return f"{_PREFIX}{chunk:06d}{suffix}"


def _state_name(chunk: int) -> str:
    return f"{_STATE}{chunk:06d}.npz"


def _is_chunk_file(name: str) -> bool:
    """``rollout-NNNNNN.<suffix>`` exactly (one writer suffix such as ``npz``): a chunk file."""
    stem, _, suffix = name.partition(".")
    digits = stem[len(_PREFIX) :]
    return stem.startswith(_PREFIX) and len(digits) == 6 and digits.isdigit() and suffix.isalnum()


def _is_state_file(name: str) -> bool:
    """``state-NNNNNN.npz`` exactly: a runner state this run saved (never a user's file)."""
    digits = name[len(_STATE) : -len(".npz")]
    return (
        name.startswith(_STATE) and name.endswith(".npz") and len(digits) == 6 and digits.isdigit()
    )


def _state_files(directory: Path) -> list[Path]:
    return [p for p in directory.glob(f"{_STATE}*.npz") if _is_state_file(p.name)]


def chunk_arrays(rollout: Rollout, chunk: int) -> dict[str, np.ndarray]:
    """The arrays of chunk ``chunk``'s file (host numpy, C-ordered, writeable)."""
    host = rollout.numpy()
    arrays: dict[str, Any] = dict(host.columns)
    arrays["last_obs"] = host.last_obs
    if host.final_mask is not None and "final_obs" in arrays:
        arrays["final_mask"] = host.final_mask
    for key, value in host.episodes.items():
        arrays[f"episodes.{key}"] = value
    arrays["chunk"] = np.int64(chunk)
    arrays["start"] = np.int64(host.start)
    arrays["first_env"] = np.int64(host.first_env)
    out = {}
    for key, value in arrays.items():
        array = np.asarray(value)
        if not array.flags.writeable or not array.flags.c_contiguous or array.base is not None:
            array = np.array(array, order="C")  # torch.from_numpy wants its own memory
        out[key] = array
    return out


# ------------------------------------------------------------ runner state


def _tree_spec(tree: Any, leaves: list[np.ndarray]) -> Any:
    """A JSON description of a pytree of arrays, its leaves appended to ``leaves``."""
    if tree is None:
        return None
    if isinstance(tree, Mapping):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError("state dicts with non-string keys are not saved")
        return {"dict": [[k, _tree_spec(v, leaves)] for k, v in tree.items()]}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        raise TypeError("NamedTuple states are not saved")
    if isinstance(tree, (tuple, list)):
        return {type(tree).__name__: [_tree_spec(v, leaves) for v in tree]}
    if not isinstance(tree, np.ndarray):
        raise TypeError(f"state leaves of type {type(tree).__name__} are not saved")
    leaves.append(tree)
    return {"leaf": len(leaves) - 1}


def _tree_build(spec: Any, leaves: Mapping[str, np.ndarray]) -> Any:
    if spec is None:
        return None
    if "dict" in spec:
        return {k: _tree_build(v, leaves) for k, v in spec["dict"]}
    if "tuple" in spec:
        return tuple(_tree_build(v, leaves) for v in spec["tuple"])
    if "list" in spec:
        return [_tree_build(v, leaves) for v in spec["list"]]
    return np.array(leaves[f"state.{spec['leaf']}"])


def _save_state(runner: Any, path: Path, npz: Any) -> dict[str, Any] | None:
    """Write the runner's state to ``path``; its record (None: this runner's state is
    not saved, so a resume computes the chunks again)."""
    state_dict = getattr(runner, "state_dict", None)
    if state_dict is None or hasattr(runner.env, "reset_where"):
        return None
    state = state_dict()
    leaves: list[np.ndarray] = []
    try:
        tree = _tree_spec(state["state"], leaves)
    except TypeError:
        return None
    obs = state["obs"]
    alias = next((i for i, leaf in enumerate(leaves) if leaf is obs), None)
    arrays: dict[str, np.ndarray] = {f"state.{i}": leaf for i, leaf in enumerate(leaves)}
    arrays.update({k: np.asarray(state[k]) for k in _COUNTERS})
    if obs is not None and alias is None:
        arrays["obs"] = np.asarray(obs)
    if any(a.dtype.hasobject for a in arrays.values()):
        return None
    with atomic_open(path) as f:
        npz.write(f, arrays, {})
    identity = {k: v for k, v in state.items() if k not in (*_COUNTERS, "state", "obs")}
    return {
        "file": path.name,
        **file_record(path),
        "tree": tree,
        "obs_leaf": alias,
        "started": obs is not None,
        "runner": identity,
    }


def _load_state(record: Mapping[str, Any], directory: Path, npz: Any) -> dict[str, Any]:
    path = directory / record["file"]
    problem = file_problem(path, record)
    if problem is not None:
        raise DataError(problem, file=str(path))
    arrays = npz.read(str(path))
    tree = _tree_build(record["tree"], arrays)
    obs: Any = None
    if record["started"]:
        alias = record.get("obs_leaf")
        if alias is None:
            obs = np.array(arrays["obs"])
        else:
            found: list[Any] = []
            tree_map(found.append, tree)
            obs = found[int(alias)]
    return {
        **record["runner"],
        **{k: np.array(arrays[k]) for k in _COUNTERS},
        "state": tree,
        "obs": obs,
    }


# ------------------------------------------------------------ writing


def _source_of(source: Any, kernel: Kernel) -> Any:
    if isinstance(source, Mapping):
        config = dict(source)
        config.setdefault("name", "env_batch")
        return kernel.create("source", config, path=("source",))
    if not callable(getattr(source, "runner", None)) or not hasattr(source, "rollout_len"):
        raise ConfigError(
            f"expected an env_batch source or its config, got {type(source).__name__}",
            path=("source",),
        )
    return source


def _chunk_lengths(source: Any, chunks: int | None) -> list[int]:
    """Steps of every chunk: ``rollout_len`` each, the last cut at ``max_steps``."""
    if chunks is None:
        if source.max_steps is None:
            raise ConfigError("give chunks, or max_steps in the source", path=("chunks",))
        chunks = math.ceil(source.max_steps / source.rollout_len)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ConfigError(f"must be an integer > 0, got {chunks!r}", path=("chunks",))
    lengths = [source.rollout_len] * chunks
    if source.max_steps is not None:
        left = source.max_steps
        lengths = [min(n, left - i * source.rollout_len) for i, n in enumerate(lengths)]
        lengths = [n for n in lengths if n > 0]
    return lengths


def _stats(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Episode statistics over chunk records (means weighted by episodes)."""
    episodes = sum(int(r["episodes"]) for r in records)

    def mean(key: str) -> float:
        if not episodes:
            return 0.0
        return sum(float(r[key]) * int(r["episodes"]) for r in records) / episodes

    return {
        "chunks": len(records),
        "env_steps": sum(int(r["env_steps"]) for r in records),
        "episodes": episodes,
        "mean_return": mean("mean_return"),
        "mean_length": mean("mean_length"),
        "completion_rate": mean("completion_rate"),
    }


def write_rollouts(
    source: Any,
    output: str | os.PathLike[str],
    *,
    chunks: int | None = None,
    writer: Any = "npz",
    resume: bool = False,
    force: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    kernel: Kernel | None = None,
    flush_seconds: float = 2.0,
    on_chunk: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write ``chunks`` rollout chunks of ``source`` to ``output``, one file each.

    :param source: an ``env_batch`` source (or a subclass: ``grid_env``, ...)
        or its config as a mapping (``{"env": "grid", "num_envs": 16}``).
    :param chunks: rollout chunks to write (default: as many as the source's
        ``max_steps`` makes). A resume may ask for more chunks than before.
    :param writer: a writer name (``npz``, ``pt``, ``h5``), config or strategy.
    :param resume: continue a run in ``output`` (same source and writer config).
    :param force: start over in ``output`` if it holds a rollout run.
    :param progress: ``progress(done, total)`` as chunks are written.
    :param kernel: where the source and writer come from (default: laden's builtins).
    :param flush_seconds: the manifest is rewritten at most this often.
    :param on_chunk: called with each chunk number once it is recorded (tests).
    :returns: a summary: ``written``, ``kept``, ``damaged`` (with
        ``damaged_files``), ``resumed_from`` (``start``, ``state`` or
        ``replay``), ``complete``, the episode statistics over every chunk,
        ``seconds`` and ``output``.
    """
    from laden.kernel import builtin_kernel

    started = time.perf_counter()
    kernel = kernel if kernel is not None else builtin_kernel()
    source = _source_of(source, kernel)
    lengths = _chunk_lengths(source, chunks)
    total = len(lengths)
    if not (hasattr(writer, "write") and hasattr(writer, "suffix")):
        writer = kernel.create("writer", writer, path=("writer",))
    npz = kernel.create("writer", "npz", path=("writer",))
    directory = Path(output)
    if (
        directory.is_dir()
        and any(directory.iterdir())
        and artifact_kind(directory) not in (KIND, None)
    ):
        prepare_output(directory, KIND)  # names what is there
    manifest = RunManifest(
        directory,
        kind=KIND,
        version=FORMAT_VERSION,
        identity={"source": config_of(source), "writer": config_of(writer)},
        owns=_is_chunk_file,
        writes=_is_state_file,  # force clears them too, after refusing a stranger
        flush_seconds=math.inf,  # flushed here, so old runner states are pruned after it
        what="laden envs collect",
    )
    runner = source.runner()
    with manifest.locked():
        if resume and not force and manifest.path.exists():
            _check_same_run(manifest)
        kept = manifest.open(resume=resume, force=force)
        by_chunk = {int(r["chunk"]): name for name, r in kept.items()}
        if by_chunk and max(by_chunk) >= total:
            raise ConfigError(
                f"{directory} holds {max(by_chunk) + 1} chunks; ask for at least as many",
                path=("chunks",),
            )
        first_missing = next((k for k in range(total) if k not in by_chunk), total)
        resumed_from = "start"
        begin = 0
        if first_missing:
            record = kept[by_chunk[first_missing - 1]]
            resumed_from = "replay"
            if record.get("state") is not None:
                try:
                    runner.load_state_dict(_load_state(record["state"], directory, npz))
                    begin, resumed_from = first_missing, "state"
                except (DataError, OSError, KeyError, ValueError):
                    runner = source.runner()  # computed again from step 0
        keep_state = None if begin == 0 else kept[by_chunk[begin - 1]]["state"]["file"]
        for path in _state_files(directory):
            if path.name != keep_state:
                path.unlink(missing_ok=True)  # a state of no kept chunk
        for name, record in kept.items():
            if record.get("state") is not None and record["state"]["file"] != keep_state:
                manifest.items[name] = {**record, "state": None}
        written = 0
        last_flush = time.monotonic()
        last_state: str | None = keep_state
        with manifest.guard():
            if progress is not None:
                progress(begin, total)
            for k in range(begin, total):
                rollout = runner.rollout(lengths[k])
                arrays = chunk_arrays(rollout, k)
                content = content_digest(arrays)
                if k in by_chunk:  # kept from before: computed again to reach what follows
                    if content != kept[by_chunk[k]].get("content"):
                        raise DataError(
                            f"chunk {k} computed again differs from the file kept from before "
                            "(the env or policy is not deterministic); rerun with --force",
                            file=str(directory / by_chunk[k]),
                        )
                    if progress is not None:
                        progress(k + 1, total)
                    continue
                state = _save_state(runner, directory / _state_name(k), npz)
                name = chunk_name(k, writer.suffix)
                with atomic_open(directory / name) as f:
                    writer.write(f, arrays, {})
                summary = rollout.summary()
                manifest.add(
                    name,
                    {
                        "status": "ok",
                        "chunk": k,
                        "start": int(rollout.start),
                        "steps": int(rollout.steps),
                        "env_steps": int(rollout.steps * rollout.num_envs),
                        **summary,
                        **file_record(directory / name),
                        "content": content,
                        "state": state,
                    },
                )
                written += 1
                if state is not None:
                    last_state = state["file"]
                if time.monotonic() - last_flush >= flush_seconds:
                    if state is not None:
                        _prune(manifest, directory, keep=state["file"])
                    else:
                        manifest.flush()
                    last_flush = time.monotonic()
                if progress is not None:
                    progress(k + 1, total)
                if on_chunk is not None:
                    on_chunk(k)
            complete = manifest.ok == total
            _prune(manifest, directory, keep=last_state, complete=complete)
    records = sorted(
        (r for r in manifest.items.values() if r.get("status") == "ok"), key=lambda r: r["chunk"]
    )
    return {
        "output": str(directory),
        "total": total,
        "written": written,
        "kept": len(kept),
        "damaged": len(manifest.damaged),
        "damaged_files": dict(sorted(manifest.damaged.items())),
        "resumed_from": resumed_from,
        "complete": complete,
        **_stats(records),
        "seconds": time.perf_counter() - started,
    }


def _check_same_run(manifest: RunManifest) -> None:
    """A resume of another run's directory: a ConfigError naming the settings that differ."""
    previous = manifest.load()
    for key in ("source", "writer"):
        theirs, ours = previous.get(key) or {}, manifest.identity[key]
        if not isinstance(theirs, Mapping):
            continue
        differ = sorted(
            k for k in {*theirs, *ours} if plain_json(theirs.get(k)) != plain_json(ours.get(k))
        )
        if differ:
            was = ", ".join(f"{k} {theirs.get(k)!r}" for k in differ)
            now = ", ".join(f"{k} {ours.get(k)!r}" for k in differ)
            raise ConfigError(
                f"cannot resume: {manifest.directory} was written with {key} {was}; this run "
                f"has {now} (use the same settings, or --force to start over)",
                path=("output",),
            )


def _prune(
    manifest: RunManifest, directory: Path, *, keep: str | None, complete: bool = False
) -> None:
    """Flush the manifest with only ``keep`` as a runner state, then delete the others.

    Deleting after the flush means the manifest on disk always names a state
    file that exists (a crash between the two leaves extra files, which the
    next resume deletes).
    """
    for name, record in manifest.items.items():
        state = record.get("state")
        if state is not None and state["file"] != keep:
            manifest.items[name] = {**record, "state": None}
    manifest.flush(complete=complete)
    for path in _state_files(directory):
        if path.name != keep:
            path.unlink(missing_ok=True)


# ------------------------------------------------------------ reading


class RolloutReader:
    """The chunk files of a rollout directory, in chunk order, each checked as read.

    :param directory: what :func:`write_rollouts` (``laden envs collect``) wrote.
    :param kernel: where the writer comes from (default: laden's builtins).
    :param verify: check each file's checksum (its size is checked always).
    :param partial: read the chunks of a run that did not finish (else a DataError).
    :raises DataError: a damaged or missing file (naming it), an unfinished run.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        kernel: Kernel | None = None,
        verify: bool = True,
        partial: bool = False,
    ) -> None:
        from laden.kernel import builtin_kernel

        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory, kind=KIND, version=FORMAT_VERSION)
        factory = kernel if kernel is not None else builtin_kernel()
        self.writer = factory.create("writer", self.manifest["writer"], path=("writer",))
        self.verify = verify
        where = str(self.directory / "manifest.json")
        if not partial and not self.manifest.get("complete"):
            raise DataError(
                "the collection did not finish; rerun `laden envs collect ... --resume`",
                file=where,
            )
        items = self.manifest["files"].items()
        self.records = sorted(
            ({**r, "file": n} for n, r in items if r.get("status") == "ok"),
            key=lambda r: int(r["chunk"]),
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._read(self.records[index])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for record in self.records:
            yield self._read(record)

    def summary(self) -> dict[str, Any]:
        """Episode statistics over every chunk (from the manifest: no file is read)."""
        return _stats(self.records)

    def _read(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        path = self.directory / record["file"]
        hint = "rerun `laden envs collect ... --resume` to write it again"
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != record["bytes"]:
                    raise DataError(
                        f"{size} bytes, the manifest says {record['bytes']} (a damaged file); "
                        + hint,
                        file=str(path),
                    )
                buffer = np.empty(size, dtype=np.uint8)
                if f.readinto(memoryview(buffer)) != size:  # type: ignore[arg-type]
                    raise DataError("the file shrank while being read", file=str(path))
        except FileNotFoundError:
            raise DataError(f"missing rollout file; {hint}", file=str(path)) from None
        if self.verify and zlib.crc32(memoryview(buffer)) != record["crc32"]:  # type: ignore[arg-type]
            raise DataError(
                f"checksum mismatch with the manifest (the file was altered); {hint}",
                file=str(path),
            )
        try:
            read_bytes = getattr(self.writer, "read_bytes", None)
            arrays = (
                dict(read_bytes(buffer, str(path)))
                if read_bytes is not None
                else dict(self.writer.read(str(path)))
            )
        except Exception as exc:  # each format fails its own way
            raise DataError(
                f"cannot read rollout file ({type(exc).__name__}: {exc}); {hint}", file=str(path)
            ) from None
        held = arrays.get("chunk")
        if held is None or int(np.asarray(held)) != int(record["chunk"]):
            raise DataError(
                f"the file holds chunk {None if held is None else int(np.asarray(held))}, the "
                f"manifest says {record['chunk']} (a file copied or renamed over it); {hint}",
                file=str(path),
            )
        return arrays


def read_rollouts(
    directory: str | os.PathLike[str],
    *,
    kernel: Kernel | None = None,
    verify: bool = True,
    partial: bool = False,
) -> RolloutReader:
    """The rollout chunks in ``directory`` (see :class:`RolloutReader`)."""
    return RolloutReader(directory, kernel=kernel, verify=verify, partial=partial)
