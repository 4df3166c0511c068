"""The resumable sweep run: points -> executor(generator) -> point files + index.

The points are cut into files of ``points_per_file`` consecutive points
(``part-00000.npz``, ...; see :mod:`laden.sweep.files`). The run is recorded by
the generic :class:`laden.files.manifest.RunManifest` (kind ``laden.sweep``)
with one item per point: ``{"status": "ok", "file": ..., <the file's
checksums>}`` or ``{"status": "failed", "error": ..., "traceback": ...}``.

- A point that raises is recorded with its error and a traceback summary, and
  the run goes on; the result (and ``laden sweep``'s exit code) counts failures.
- ``resume`` keeps every point whose file is intact, keeps failed points as
  failed, and runs the rest; ``retry_failed`` (a resume) runs only the failed
  ones (and any left undone). A file is written after all its points are
  done, then its points are recorded; a file whose points are partly kept
  is rewritten from the kept points read back plus the new ones, so the files
  are the same as those of an uninterrupted run, byte for byte.
- ``index.json`` (point id -> file, parameters, seed, status) is rewritten at
  every stop; it holds no timestamp.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from laden.errors import ConfigError
from laden.files.manifest import RunManifest, file_problem, file_record
from laden.io import plain_json, write_json
from laden.progress import Progress
from laden.sweep.files import SUFFIXES, SweepFiles, file_names, part_name
from laden.sweep.points import Points, expand
from laden.sweep.spec import SweepSpec

if TYPE_CHECKING:
    from laden.kernel import Kernel

__all__ = ["INDEX", "SweepResult", "dry_run", "run_sweep"]

INDEX = "index.json"
FORMAT_VERSION = 1
#: Lines of a failed point's traceback kept in the manifest and index.
TRACEBACK_LINES = 6
#: Points per executor task at most (a task runs several points to spread its cost).
TASK_POINTS = 64
#: Tasks a run is cut into at least (fewer points per task), so that a short sweep of slow
#: points still spreads over the workers: 100 points of 20 ms as 64 + 36 kept 2 workers
#: at 1.56x one; the executor groups tasks again when they turn out to be quick.
MIN_TASKS = 64


@attrs.frozen(kw_only=True)
class SweepResult:
    """What a run did: counts, failures (id -> error) and where it wrote."""

    directory: str
    total: int
    ok: int
    failed: dict[str, str]
    ran: int
    kept: int
    files: int
    seconds: float
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _summary(exc: BaseException) -> str:
    """The last frames of a traceback, short enough to keep per point."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines).strip().splitlines()
    return "\n".join(text[-TRACEBACK_LINES:])


def _run_task(task: tuple[Any, list[tuple[int, dict[str, Any], int]]]) -> list[Any]:
    """Run one task's points; a point that raises gives ``(i, None, (error, traceback))``."""
    generator, points = task
    out: list[Any] = []
    for i, params, seed in points:
        try:
            arrays = generator.generate(params, seed)
            checked = {}
            for key, value in arrays.items():
                array = np.asarray(value)
                if array.dtype.kind not in "biufc":
                    raise TypeError(f"generate() gave {key!r} as {array.dtype}, not numbers")
                checked[str(key)] = array
            out.append((i, checked, None))
        except Exception as exc:
            out.append((i, None, (f"{type(exc).__name__}: {exc}", _summary(exc))))
    return out


def _generators(spec: SweepSpec, kernel: Kernel) -> list[Any]:
    return [
        kernel.create("generator", b.generator, path=("sweep", "stimuli", i, "type"))
        for i, b in enumerate(spec.blocks)
    ]


def _index(points: Points, manifest: RunManifest, spec: SweepSpec) -> dict[str, Any]:
    entries = {}
    for i in range(len(points)):
        point = points[i]
        record = manifest.items.get(point["id"], {})
        status = record.get("status", "pending")
        entry = {
            "file": record.get("file") if status == "ok" else None,
            "block": point["block"],
            "generator": point["generator"],
            "parameters": point["parameters"],
            "repetition": point["repetition"],
            "seed": point["seed"],
            "status": status,
        }
        if status == "failed":
            entry["error"] = record.get("error")
        entries[point["id"]] = entry
    return {
        "format_version": FORMAT_VERSION,
        "metadata": spec.metadata,
        "writer": spec.writer,
        "points_per_file": spec.points_per_file,
        "order": [str(x) for x in points.ids],
        "points": entries,
    }


def _create_executor(kernel: Kernel, executor: Any, spec: SweepSpec, workers: int | None) -> Any:
    if executor is None or isinstance(executor, Mapping | str):
        config = dict(spec.executor) if executor is None else executor
        if isinstance(config, str):
            config = {"name": config}
        config = dict(config)
        if workers is not None:
            config["workers"] = workers
        return kernel.create("executor", config, path=("executor",))
    return executor


def _is_part_file(name: str) -> bool:
    """``part-NNNNN<suffix>``: a point file of any writer (see :func:`part_name`)."""
    stem, dot, suffix = name.partition(".")
    return f"{dot}{suffix}" in SUFFIXES.values() and stem[:5] == "part-" and stem[5:].isdigit()


def run_sweep(
    spec: SweepSpec,
    *,
    kernel: Kernel,
    output: str | Path | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    force: bool = False,
    executor: Any = None,
    workers: int | None = None,
    progress: bool | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> SweepResult:
    """Run ``spec``'s points into ``output`` (default: the file's ``output.dir``).

    :param executor: an executor, its config (``{"name": "local", "workers": 2}``)
        or None for the sweep file's.
    :param workers: overrides the executor config's ``workers``.
    :param progress: show a progress bar (default: on a terminal).
    :param on_chunk: called with each file's chunk number once it is recorded (tests).
    """
    started = time.monotonic()
    target = output if output is not None else spec.output_dir
    if target is None:
        raise ConfigError("no output directory: pass --output or set output.dir", path=("output",))
    directory = Path(target)
    points = expand(spec)
    total = len(points)
    files = SweepFiles(
        spec.writer,
        kernel=kernel,
        metadata=spec.metadata,
        compress=spec.compress,
        sweep=spec.identity(),
    )
    generators = _generators(spec, kernel)
    runner = _create_executor(kernel, executor, spec, workers)
    resume = resume or retry_failed
    manifest = RunManifest(
        directory,
        kind="laden.sweep",
        version=FORMAT_VERSION,
        identity={"sweep": spec.identity()},
        owns=lambda name: False,  # items are points, not files: the run manages its files
        writes=lambda name: name == INDEX or _is_part_file(name),
        items="points",
        option="output",
        what="laden sweep",
    )
    with manifest.locked():
        failed_before: dict[str, dict[str, Any]] = {}
        if manifest.path.exists() and resume:
            previous = manifest.load()
            if not retry_failed:
                failed_before = {
                    k: v for k, v in previous["points"].items() if v.get("status") == "failed"
                }
        problems: dict[str, str | None] = {}

        def check(name: str, record: Mapping[str, Any]) -> str | None:
            file = record.get("file")
            if not isinstance(file, str):
                return "no file recorded"
            if file not in problems:
                problems[file] = file_problem(directory / file, record)
            return problems[file]

        kept = manifest.open(resume=resume, force=force, check=check)
        manifest.items.update(failed_before)
        position = {str(pid): i for i, pid in enumerate(points.ids)} if manifest.items else {}
        state = np.zeros(total, dtype=np.int8)  # 0 to run, 1 ok, 2 failed
        for pid, record in manifest.items.items():
            if pid in position:
                state[position[pid]] = 1 if record.get("status") == "ok" else 2
        ppf = spec.points_per_file
        todo = np.flatnonzero(state == 0)
        chunks = np.unique(todo // ppf) if todo.size else np.array([], dtype=np.int64)
        failures = {k: str(v.get("error")) for k, v in failed_before.items()}
        ran = 0
        written = 0
        bar = Progress(len(todo), desc="sweep", unit="points", enabled=progress)

        per_task = min(TASK_POINTS, max(1, -(-len(todo) // MIN_TASKS)))

        def tasks() -> Iterator[tuple[Any, list[tuple[int, dict[str, Any], int]]]]:
            for chunk in chunks:
                lo, hi = int(chunk) * ppf, min(total, (int(chunk) + 1) * ppf)
                pending = lo + np.flatnonzero(state[lo:hi] == 0)
                for at in range(0, len(pending), per_task):
                    group = pending[at : at + per_task]
                    by_block: dict[int, list[tuple[int, dict[str, Any], int]]] = {}
                    for i in group.tolist():
                        b = int(points.block[i])
                        by_block.setdefault(b, []).append(
                            (i, points.parameters(i), int(points.seeds[i]))
                        )
                    for b, items in by_block.items():
                        yield generators[b], items

        def finish_chunk(chunk: int, results: dict[int, Any]) -> None:
            nonlocal written
            lo, hi = chunk * ppf, min(total, (chunk + 1) * ppf)
            name = part_name(chunk, spec.writer)
            path = directory / name
            old_ok = [i for i in range(lo, hi) if state[i] == 1]
            previous = files.read(path) if old_ok else {}
            entries = []
            for i in range(lo, hi):
                if i in results and results[i][0] is not None:
                    entries.append((i, results[i][0]))
                elif state[i] == 1:
                    entries.append((i, previous[str(points.ids[i])]))
            if entries:
                files.write(path, [(points[i], arrays) for i, arrays in entries])
                written += 1
                checksums = file_record(path)
                for i, _ in entries:
                    manifest.add(str(points.ids[i]), {"status": "ok", "file": name, **checksums})
                    state[i] = 1
            for i, (arrays, error) in sorted(results.items()):
                if arrays is None:
                    pid = str(points.ids[i])
                    manifest.add(
                        pid, {"status": "failed", "error": error[0], "traceback": error[1]}
                    )
                    failures[pid] = error[0]
                    state[i] = 2
            if on_chunk is not None:
                on_chunk(chunk)

        try:
            with manifest.guard(), bar:
                current: int | None = None
                results: dict[int, Any] = {}
                done = 0
                stream = runner.map(_run_task, tasks())
                try:
                    for batch in stream:
                        for i, arrays, error in batch:
                            chunk = i // ppf
                            if current is not None and chunk != current:
                                finish_chunk(current, results)
                                results = {}
                            current = chunk
                            results[i] = (arrays, error)
                            ran += 1
                            if error is not None:
                                failures[str(points.ids[i])] = error[0]
                                bar.desc = f"sweep ({len(failures)} failed)"
                        done += len(batch)
                        bar(done)
                    if current is not None:
                        finish_chunk(current, results)
                finally:
                    with contextlib.suppress(Exception):
                        stream.close()
                complete = manifest.finish(total)
        finally:
            with contextlib.suppress(OSError):
                write_json(directory / INDEX, plain_json(_index(points, manifest, spec)))
    ok = manifest.ok
    return SweepResult(
        directory=str(directory),
        total=total,
        ok=ok,
        failed=dict(sorted(failures.items())),
        ran=ran,
        kept=len(kept),
        files=len(file_names(directory, spec.writer)),
        seconds=time.monotonic() - started,
        complete=complete,
    )


def dry_run(
    spec: SweepSpec,
    *,
    kernel: Kernel,
    output: str | Path | None = None,
    examples: int = 3,
    workers: int | None = None,
    measure: int = 3,
) -> dict[str, Any]:
    """What a run would do, without writing anything: points per block and in
    total, a few example points, the output layout, and bytes and time
    estimated from running ``measure`` points here."""
    started = time.monotonic()
    points = expand(spec)
    expand_seconds = time.monotonic() - started
    total = len(points)
    picks: Sequence[int] = sorted({*range(min(examples, total)), total - 1}) if total else []
    generators = _generators(spec, kernel)
    measured = 0
    nbytes = 0
    seconds = 0.0
    errors: list[str] = []
    for i in range(min(measure, total)):
        b = int(points.block[i])
        task = (generators[b], [(i, points.parameters(i), int(points.seeds[i]))])
        if i == 0:
            _run_task(task)  # warm up (imports, caches): not what every point costs
        t0 = time.perf_counter()
        out = _run_task(task)
        seconds += time.perf_counter() - t0
        _, arrays, error = out[0]
        if error is not None:
            errors.append(f"{points.ids[i]}: {error[0]}")
            continue
        measured += 1
        nbytes += sum(a.nbytes for a in arrays.values())
    executor_config = dict(spec.executor)
    if workers is not None:
        executor_config["workers"] = workers
    n_workers = executor_config.get("workers")
    parallel = max(1, int(n_workers)) if isinstance(n_workers, int) and n_workers else None
    per_point = seconds / max(1, measured + len(errors))
    ppf = spec.points_per_file
    files = -(-total // ppf)
    return {
        "source": spec.source,
        "total": total,
        "blocks": [
            {
                "name": b.name,
                "generator": b.generator,
                "points": b.size,
                "repetitions": b.repetitions,
                "axes": {k: len(v) for k, v in b.parameters.items()},
            }
            for b in spec.blocks
        ],
        "examples": [points[i] for i in picks],
        "output": {
            "directory": str(output if output is not None else spec.output_dir),
            "writer": spec.writer,
            "points_per_file": ppf,
            "files": files,
            "first_file": part_name(0, spec.writer) if files else None,
            "last_file": part_name(files - 1, spec.writer) if files else None,
            "index": INDEX,
        },
        "estimate": {
            "measured_points": measured,
            "bytes_per_point": nbytes / measured if measured else None,
            "bytes": int(nbytes / measured * total) if measured else None,
            "seconds_per_point": per_point,
            "seconds_one_worker": per_point * total,
            "workers": parallel,
            "seconds": per_point * total / (parallel or 1),
            "errors": errors,
        },
        "expand_seconds": expand_seconds,
    }
