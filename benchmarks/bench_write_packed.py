"""``laden write`` of a packed plan whose long documents are split across packs.

    python benchmarks/bench_write_packed.py [--n 600] [--max-length 1024] [--workers 1]

Issue 10: before, a sample split across k packs was read and tokenized once
per pack (on man pages, 50.7M tokens tokenized for 4.7M real ones, 160 s
against 25 s unpacked). Now every sample a write needs more than once is
tokenized once, into a temporary token file, and sliced for each pack. This
prints the tokens tokenized and the time, packed (``tokenize_once`` on and
off, the old behaviour) beside unpacked, on long documents (lognormal lengths
with a long tail, like man pages and licences) and a BPE trained on them.
The files written are checked to be identical with and without the token file.
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
from bench_reader import trained_tokenizer
from common import print_table

import laden
from laden.files.write import load_manifest, write_batches
from laden.lengths import build_lengths
from laden.plan import BatchPlan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="documents")
    parser.add_argument("--max-length", type=int, default=1024, help="pack length")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="laden-bench-write-packed-"))
    try:
        run(root, args.n, args.max_length, args.workers)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, n: int, max_length: int, workers: int) -> None:
    kernel = laden.Kernel(autoload=False)
    rng = np.random.default_rng(0)
    data = root / "data.jsonl"
    vocabulary = np.array(
        ["".join(rng.choice(list("etaoinshrdlucmfw"), k)) for k in rng.integers(2, 9, 20_000)]
    )
    # Words per document: median ~1,100, a long tail past 20,000 (man pages, licences).
    sizes = np.clip(rng.lognormal(7.0, 1.1, n), 20, 60_000).astype(np.int64)
    with data.open("w") as f:
        for i, size in enumerate(sizes):
            picks = np.minimum(rng.zipf(1.2, size), vocabulary.size) - 1
            f.write(json.dumps({"id": i, "text": " ".join(vocabulary[picks])}) + "\n")
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = trained_tokenizer(kernel, root, data)
    inline = kernel.create("executor", {"name": "local", "workers": 0})
    table = build_lengths(source, tokenizer, executor=inline)
    budget = 8 * max_length
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": budget})
    packer = kernel.create(
        "packer", {"name": "best_fit", "max_length": max_length, "overflow": "split"}
    )
    packed = BatchPlan.build(table, sampler, packer, epochs=1, seed=0)
    unpacked_sampler = kernel.create(
        "sampler",
        {"name": "token_budget", "token_budget": int(table.length.max()), "num_buckets": 8},
    )
    unpacked = BatchPlan.build(table, unpacked_sampler, epochs=1, seed=0)
    split = int(np.unique(packed.pack.order[packed.pack.seg_start > 0]).size)
    writer = kernel.create("writer", "npz")
    executor = kernel.create("executor", {"name": "local", "workers": workers})
    rows = []
    results = {}
    for label, plan, once in (
        ("unpacked", unpacked, True),
        ("packed, tokenize once (now)", packed, True),
        ("packed, once per pack (before)", packed, False),
    ):
        out = root / (label.split(",")[0].replace(" ", "-") + ("-once" if once else "-each"))
        start = time.perf_counter()
        summary = write_batches(
            plan, table, source, tokenizer, writer, out, executor=executor, tokenize_once=once
        )
        seconds = time.perf_counter() - start
        results[label] = out
        rows.append(
            [
                label,
                f"{plan.total_steps:,}",
                f"{summary['tokens_tokenized']:,}",
                f"{summary['tokens_tokenized'] / table.num_tokens:.2f}x",
                f"{seconds:.1f}",
            ]
        )
    now, before = (
        load_manifest(results["packed, tokenize once (now)"])["files"],
        load_manifest(results["packed, once per pack (before)"])["files"],
    )
    same = {k: r["blake2b"] for k, r in now.items()} == {k: r["blake2b"] for k, r in before.items()}
    print(
        f"{n:,} documents, {table.num_tokens:,} real tokens ({type(tokenizer).name} tokenizer), "
        f"longest {int(table.length.max()):,}; packs of {max_length:,} with overflow=split "
        f"({split:,} documents split), {workers} worker(s)\n"
    )
    print_table(["write", "batches", "tokens tokenized", "x real", "seconds"], rows)
    print(f"\nfiles identical with and without the token file: {same}")
    if not same:
        raise SystemExit("the token file changed the batch files")


if __name__ == "__main__":
    main()
