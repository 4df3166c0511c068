"""Batch files: write with 1 vs 2 workers; BatchReader vs np.load and vs on-the-fly loading.

    python benchmarks/bench_reader.py [--n 20000]

Targets (issue 6, kept by issue 10): reading written npz batches through
``BatchReader`` at least 80% of a bare ``np.load`` loop over the same files,
with every file's size, CRC-32 and identity checked (the default), and
beside it with ``verify=False``; training-loop
batches per second from ``BatchReader`` against a ``torch`` ``DataLoader``
that reads the JSONL, tokenizes and collates the same batches on the fly
(goal >= 10x); writing speed with 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, write_prose_corpus

import laden
from laden.collate.samples import SourceSamples
from laden.files.write import write_batches
from laden.lengths import build_lengths
from laden.plan import BatchPlan


def trained_tokenizer(kernel: laden.Kernel, root: Path, data: Path) -> object:
    """A real BPE (8k vocabulary, trained here on the data), as LLM data uses; bytes without it."""
    try:
        import tokenizers
        from tokenizers import models, pre_tokenizers, trainers
    except ImportError:
        return kernel.create("tokenizer", "bytes")
    bpe = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = (json.loads(line)["text"] for line in data.open())
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8000, special_tokens=["[UNK]"]))
    bpe.save(str(root / "tokenizer.json"))
    return kernel.create("tokenizer", {"name": "hf", "path": str(root / "tokenizer.json")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="laden-bench-reader-"))
    try:
        run(root, args.n)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, n: int) -> None:
    kernel = laden.Kernel(autoload=False)
    data = root / "data.jsonl"
    write_prose_corpus(data, n)
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = trained_tokenizer(kernel, root, data)
    table = build_lengths(
        source, tokenizer, executor=kernel.create("executor", {"name": "local", "workers": 0})
    )
    sampler = kernel.create(
        "sampler", {"name": "token_budget", "token_budget": 16384, "num_buckets": 4}
    )
    plan = BatchPlan.build(table, sampler, epochs=1, seed=0)
    writer = kernel.create("writer", "npz")
    rows = []
    timings = {}
    for workers in (1, 2):
        out = root / f"batches-{workers}"
        executor = kernel.create("executor", {"name": "local", "workers": workers})
        start = time.perf_counter()
        write_batches(plan, table, source, tokenizer, writer, out, executor=executor)
        timings[workers] = time.perf_counter() - start
        rows.append(
            [
                f"laden write, {workers} worker(s)",
                f"{timings[workers]:.2f}",
                f"{plan.total_steps / timings[workers]:.0f} files/s",
            ]
        )
    rows.append(["speed-up with 2 workers", f"{timings[1] / timings[2]:.2f}x", ""])
    out = root / "batches-1"
    files = sorted(out.glob("*.npz"))

    def bare() -> int:
        count = 0
        for path in files:
            with np.load(path, allow_pickle=False) as archive:
                batch = {key: archive[key] for key in archive.files}
            count += batch["input_ids"].shape[0] > 0
        return count

    def reader(prefetch: int = 4, verify: bool = True) -> int:
        return sum(
            1 for _ in laden.BatchReader(out, kernel=kernel, prefetch=prefetch, verify=verify)
        )

    bare()  # warm the page cache for both
    bare_times, reader_times, sync_times, unchecked_times = [], [], [], []
    for _ in range(5):  # alternate, and take medians: this machine's timings swing
        start = time.perf_counter()
        bare()
        bare_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reader()
        reader_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reader(0)
        sync_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reader(verify=False)
        unchecked_times.append(time.perf_counter() - start)
    t_bare, t_reader = float(np.median(bare_times)), float(np.median(reader_times))
    t_sync = float(np.median(sync_times))
    t_unchecked = float(np.median(unchecked_times))
    rows.append(
        ["np.load loop (median of 5)", f"{t_bare:.3f}", f"{len(files) / t_bare:.0f} batches/s"]
    )
    rows.append(
        [
            "BatchReader (median of 5)",
            f"{t_reader:.3f}",
            f"{len(files) / t_reader:.0f} batches/s",
        ]
    )
    rows.append(["BatchReader / np.load (checks on)", f"{t_bare / t_reader:.0%}", "target >= 80%"])
    rows.append(
        [
            "BatchReader verify=False (median of 5)",
            f"{t_unchecked:.3f}",
            f"{t_bare / t_unchecked:.0%} of np.load",
        ]
    )
    rows.append(
        [
            "BatchReader prefetch=0 (median of 5)",
            f"{t_sync:.3f}",
            f"{t_bare / t_sync:.0%} of np.load",
        ]
    )
    try:
        from laden.torch import PlanDataset, PlanLoader
    except ImportError:  # pragma: no cover
        PlanLoader = None  # type: ignore[assignment,misc]
    if PlanLoader is not None:
        try:
            import torch  # noqa: F401
        except ImportError:
            PlanLoader = None  # type: ignore[assignment,misc]
    if PlanLoader is not None:
        samples = SourceSamples(source=source, tokenizer=tokenizer, table=table)
        loader = PlanLoader(plan, PlanDataset.for_plan(plan, samples, table))
        start = time.perf_counter()
        count = sum(1 for _ in loader)
        t_fly = time.perf_counter() - start
        start = time.perf_counter()
        count_r = sum(1 for _ in laden.BatchReader(out, kernel=kernel, backend="torch"))
        t_read_torch = time.perf_counter() - start
        assert count == count_r
        rows.append(
            [
                "DataLoader: JSONL + tokenize + collate",
                f"{t_fly:.3f}",
                f"{count / t_fly:.0f} batches/s",
            ]
        )
        rows.append(
            [
                "BatchReader, torch tensors",
                f"{t_read_torch:.3f}",
                f"{count / t_read_torch:.0f} batches/s",
            ]
        )
        rows.append(["BatchReader / on the fly", f"{t_fly / t_read_torch:.1f}x", "goal >= 10x"])
    print(
        f"{n:,} samples ({table.num_tokens:,} tokens, {type(tokenizer).name} tokenizer), "
        f"{plan.total_steps:,} batches "
        f"of <= 16384 tokens, npz, {sum(f.stat().st_size for f in files) / 2**20:.0f} MiB\n"
    )
    print_table(["what", "seconds", "rate"], rows)


if __name__ == "__main__":
    main()
