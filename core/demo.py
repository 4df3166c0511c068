"""``laden demo``: the main job on built-in data that needs no download.

The data is the Python standard library's own ``.py`` files on the running
machine, one sample per top-level definition (module preambles included).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sysconfig
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import numpy as np
from laden.kernel import Kernel
from laden.progress import Progress

__all__ = ["demo_command", "split_definitions", "stdlib_files", "write_stdlib_dataset"]

# A top-level definition starts at column 0; the decorators right above belong to it.
_TOP_LEVEL = re.compile(r"^(?:@[^\n]*\n)*(?:async def |def |class )", re.MULTILINE)


def stdlib_files(root: str | None = None) -> list[Path]:
    """Every ``.py`` file of the running interpreter's standard library, sorted."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = [p for p in base.rglob("*.py") if "site-packages" not in p.parts]
    return sorted(files)


def split_definitions(source: str) -> list[str]:
    """Cut a module into its preamble and its top-level definitions."""
    starts = [m.start() for m in _TOP_LEVEL.finditer(source)]
    bounds = [0, *(s for s in starts if s > 0), len(source)]
    pieces = (source[a:b].strip("\n") for a, b in itertools.pairwise(bounds))
    return [p for p in pieces if p.strip()]


def _read_samples(path: str) -> list[tuple[str, str]]:
    """Worker: the samples of one file as ``(id, text)``; unreadable files give none."""
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [(f"{path}#{i}", text) for i, text in enumerate(split_definitions(source))]


def write_stdlib_dataset(
    output: Path, kernel: Kernel, *, workers: int | None = None, root: str | None = None
) -> tuple[Path, int]:
    """Write the stdlib samples as JSONL (``id``, ``text``); returns its path and row count."""
    files = [str(p) for p in stdlib_files(root)]
    executor = kernel.create("executor", {"name": "local", "workers": workers})
    output.mkdir(parents=True, exist_ok=True)
    path = output / "stdlib.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    rows = 0
    with Progress(len(files), "reading stdlib", unit="files") as bar, tmp.open("w") as out:
        for samples in executor.map(_read_samples, files, progress=bar):
            for sample_id, text in samples:
                out.write(json.dumps({"id": sample_id, "text": text}) + "\n")
                rows += 1
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    return path, rows


def _texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def ascii_histogram(lengths: np.ndarray, *, bins: int = 12, width: int = 40) -> list[str]:
    """A log-spaced histogram of lengths as text lines."""
    if lengths.size == 0:
        return ["(no samples)"]
    lo, hi = max(int(lengths.min()), 1), max(int(lengths.max()), 2)
    edges = np.unique(np.geomspace(lo, hi + 1, bins + 1).astype(np.int64))
    counts, _ = np.histogram(lengths, bins=edges)
    top = max(int(counts.max()), 1)
    return [
        f"{edges[i]:>8} - {edges[i + 1] - 1:<8} {'#' * round(width * c / top):<{width}} {c}"
        for i, c in enumerate(counts)
    ]


def _summary(name: str, lengths: np.ndarray) -> str:
    p = np.percentile(lengths, [50, 90, 99]) if lengths.size else [0, 0, 0]
    return (
        f"{name:<11} samples={lengths.size:,} tokens={int(lengths.sum()):,} "
        f"p50={p[0]:.0f} p90={p[1]:.0f} p99={p[2]:.0f} max={int(lengths.max(initial=0)):,}"
    )


@click.command("demo")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("laden-demo"),
    show_default=True,
    help="Where the demo writes its dataset and reports.",
)
@click.option("--workers", type=int, default=None, help="Worker processes (default: CPUs).")
@click.pass_context
def demo_command(ctx: click.Context, output: Path, workers: int | None) -> None:
    """Measure the Python standard library as a training set and show its lengths."""
    kernel = ctx.find_object(Kernel)
    assert kernel is not None
    started = time.perf_counter()
    dataset, rows = write_stdlib_dataset(output, kernel, workers=workers)
    click.echo(f"dataset: {rows:,} samples (top-level definitions of the stdlib) -> {dataset}")
    texts: Sequence[str] = list(_texts(dataset))
    for name in ("bytes", "whitespace"):
        tokenizer = kernel.create("tokenizer", name)
        lengths = tokenizer.count(texts)
        click.echo(_summary(name, lengths))
        if name == "bytes":
            click.echo("\nlength histogram (bytes tokenizer):")
            for line in ascii_histogram(lengths):
                click.echo("  " + line)
            click.echo("")
    click.echo(f"done in {time.perf_counter() - started:.1f}s; output in {output}/")
