"""Length and batch analysis: histograms, percentiles, bucket efficiency, batch metrics.

:func:`compare_batching` plans one epoch of a length table with a token-budget
sampler, random fixed-size batches and (optionally) packed rows, with the
metrics of each: what ``laden analyze`` and ``laden demo`` report.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import numpy as np

from laden.batching import padding_to_edges, suggest_bucket_edges
from laden.errors import MissingDependencyError
from laden.io import atomic_write_bytes
from laden.records import EpochPlan, LengthTable, PackPlan

if TYPE_CHECKING:
    from laden.kernel import Kernel

__all__ = [
    "BatchingComparison",
    "analyze_report",
    "ascii_counts",
    "ascii_histogram",
    "batch_bytes_report",
    "batch_metrics",
    "bucket_report",
    "compare_batching",
    "depth_report",
    "length_stats",
    "over_budget_line",
    "over_budget_report",
    "packed_batch_metrics",
    "packing_metrics",
    "plot_histogram",
    "recommendations",
    "repeat_rate",
    "suggest_report",
]

PERCENTILES = (50, 90, 95, 99)


def length_stats(lengths: np.ndarray) -> dict[str, Any]:
    """Count, tokens, min, max, mean and percentiles of sample lengths."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return {"samples": 0, "tokens": 0}
    p = np.percentile(lengths, PERCENTILES)
    return {
        "samples": int(lengths.size),
        "tokens": int(lengths.sum()),
        "min": int(lengths.min()),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
        **{f"p{q}": float(v) for q, v in zip(PERCENTILES, p, strict=True)},
    }


def histogram(lengths: np.ndarray, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Counts over log-spaced integer bins; returns ``(edges, counts)``."""
    lengths = np.asarray(lengths)
    lo, hi = max(int(lengths.min(initial=1)), 1), max(int(lengths.max(initial=1)), 2)
    edges = np.unique(np.geomspace(lo, hi + 1, bins + 1).astype(np.int64))
    counts, _ = np.histogram(np.maximum(lengths, lo), bins=edges)
    return edges, counts


def ascii_histogram(lengths: np.ndarray, *, bins: int = 16, width: int = 40) -> list[str]:
    """A log-spaced histogram of lengths as text lines (``lo - hi  ####  count``)."""
    if np.asarray(lengths).size == 0:
        return ["(no samples)"]
    edges, counts = histogram(lengths, bins)
    top = max(int(counts.max()), 1)
    return [
        f"{edges[i]:>8} - {edges[i + 1] - 1:<8} {'#' * round(width * c / top):<{width}} {c}"
        for i, c in enumerate(counts)
    ]


def plot_histogram(
    lengths: np.ndarray,
    path: str | os.PathLike[str],
    *,
    edges: Sequence[int] = (),
    title: str = "sample lengths",
) -> Path:
    """Write a PNG histogram (log-spaced bins, bucket edges as lines). Needs matplotlib."""
    plt = pyplot()
    bin_edges, counts = histogram(lengths, 40)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.stairs(counts, bin_edges, fill=True, color="#4c72b0")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    ax.set_title(title)
    for edge in edges:
        ax.axvline(edge, color="#c44e52", linestyle="--", linewidth=1)
    return save_png(fig, path)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display); an error naming the extra
    ``plot`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("plot", "png", ["matplotlib"], "plot") from exc
    return plt


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically, and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    pyplot().close(fig)
    target = Path(path)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def bucket_report(lengths: np.ndarray, edges: Sequence[int]) -> list[dict[str, Any]]:
    """Per bucket: range, samples, share, tokens and padding efficiency.

    ``efficiency_to_edge`` pads every sample to the bucket's upper edge (the
    worst case for a batch of that bucket); ``efficiency_to_max`` to the
    longest sample actually in the bucket. The bucket above the last edge is
    the overflow bucket (no edge).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    edge_array = np.asarray(edges, dtype=np.int64)
    bucket = np.searchsorted(edge_array, lengths, side="left")
    total = max(lengths.size, 1)
    rows = []
    for b in range(edge_array.size + 1):
        members = lengths[bucket == b]
        lo = int(edge_array[b - 1]) + 1 if b else 0
        hi = int(edge_array[b]) if b < edge_array.size else None
        tokens = int(members.sum())
        longest = int(members.max(initial=0))
        row: dict[str, Any] = {
            "bucket": b,
            "range": [lo, hi],
            "samples": int(members.size),
            "share": members.size / total,
            "tokens": tokens,
            "max": longest,
            "efficiency_to_max": tokens / max(members.size * longest, 1) if members.size else None,
            "efficiency_to_edge": (
                tokens / max(members.size * hi, 1) if members.size and hi is not None else None
            ),
        }
        rows.append(row)
    return rows


def recommendations(lengths: np.ndarray, edges: Sequence[int]) -> list[str]:
    """Plain advice on a bucketing: crowded or wasteful buckets, better edges."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = []
    if lengths.size == 0:
        return ["the table is empty"]
    rows = bucket_report(lengths, edges)
    overflow = rows[-1]
    if edges and overflow["samples"]:
        out.append(
            f"{overflow['samples']:,} samples ({overflow['share']:.1%}) are longer than the "
            f"last edge {edges[-1]}: raise it to {overflow['max']} or choose an overflow policy"
        )
    for row in rows:
        eff = row["efficiency_to_edge"]
        if eff is not None and eff < 0.75 and row["samples"]:
            out.append(
                f"bucket {row['bucket']} {row['range']} wastes {1 - eff:.0%} to padding at its "
                "edge: split it"
            )
        crowded_and_loose = eff is not None and eff < 0.9 and row["share"] > 0.6
        if crowded_and_loose and len(rows) > 1:
            out.append(
                f"bucket {row['bucket']} holds {row['share']:.0%} of the samples: add an edge "
                "inside it"
            )
    current = padding_to_edges(lengths, (*edges, int(lengths.max())))
    better = suggest_bucket_edges(lengths, len(edges) + 1)  # as many buckets as now
    best = padding_to_edges(lengths, better)
    if best < 0.9 * current:
        out.append(
            f"edges {better.tolist()} pad {best:,} tokens instead of {current:,} "
            f"({1 - best / max(current, 1):.0%} less): `laden suggest --num-buckets {better.size}`"
        )
    return out or ["the bucketing is sound"]


def suggest_report(lengths: np.ndarray, num_buckets: int) -> dict[str, Any]:
    """Suggested edges with the padding they leave, against a single bucket."""
    lengths = np.asarray(lengths, dtype=np.int64)
    edges = suggest_bucket_edges(lengths, num_buckets)
    tokens = int(lengths.sum())
    padded = padding_to_edges(lengths, edges)
    single = padding_to_edges(lengths, edges[-1:]) if edges.size else 0
    return {
        "num_buckets": num_buckets,
        "bucket_edges": edges.tolist(),
        "padding_tokens": padded,
        "efficiency_to_edge": tokens / max(tokens + padded, 1),
        "single_bucket_efficiency": tokens / max(tokens + single, 1),
        "buckets": bucket_report(lengths, edges[:-1].tolist()) if edges.size else [],
    }


def batch_metrics(plan: EpochPlan, lengths: np.ndarray, *, top: int = 10) -> dict[str, Any]:
    """Efficiency (real / padded tokens), padding waste and the batch-shape histogram."""
    sizes = plan.batch_sizes
    real = plan.real_tokens(lengths)
    padded = plan.padded_tokens()
    shapes: dict[str, int] = {}
    if sizes.size:
        pairs, counts = np.unique(np.stack([sizes, plan.max_length]), axis=1, return_counts=True)
        ranked = np.argsort(-counts, kind="stable")[:top]
        shapes = {f"{pairs[0, i]}x{pairs[1, i]}": int(counts[i]) for i in ranked}
    return {
        "batches": int(sizes.size),
        "samples": int(plan.order.size),
        "dropped": int(plan.dropped.size),
        "truncated": int(plan.truncated.size),
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_tokens": padded - real,
        "efficiency": real / max(padded, 1),
        "batch_size": length_stats(sizes) if sizes.size else {},
        "distinct_shapes": int(np.unique(np.stack([sizes, plan.max_length]), axis=1).shape[1])
        if sizes.size
        else 0,
        "top_shapes": shapes,
    }


def _batch_keys(plan: EpochPlan) -> np.ndarray:
    """A 64-bit key per batch that depends only on the set of units in it.

    The sum (mod 2**64) of a splitmix64 mix of each unit, xor the batch size:
    independent of the order inside the batch, and two different batches
    collide with probability about 2**-64.
    """
    z = plan.order.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    sizes = plan.batch_sizes
    if not sizes.size:
        return np.zeros(0, dtype=np.uint64)
    sums = np.add.reduceat(z, plan.offsets[:-1]) if z.size else np.zeros(sizes.size, np.uint64)
    keys: np.ndarray = np.where(sizes > 0, sums, 0).astype(np.uint64) ^ sizes.astype(np.uint64)
    return keys


def repeat_rate(earlier: EpochPlan, later: EpochPlan) -> float:
    """The fraction of ``later``'s batches that hold exactly the units of a batch of ``earlier``.

    Batches that repeat from epoch to epoch make the epochs less different than
    shuffling promises (a fixed top-length bucket cut the same way each epoch).
    """
    keys = _batch_keys(later)
    if not keys.size:
        return 0.0
    return float(np.isin(keys, _batch_keys(earlier)).mean())


def packing_metrics(plan: PackPlan) -> dict[str, Any]:
    """Packing ratio (sequences per row), efficiency and the segments-per-row histogram.

    Efficiency is real tokens over ``rows * max_length``; what the overflow
    policy dropped, cut or split is carried over from the plan's report.
    """
    per_row = np.diff(plan.offsets)
    real = int(plan.seg_length.sum())
    rows = len(plan)
    counts = np.bincount(per_row) if per_row.size else np.zeros(0, dtype=np.int64)
    sequences = int(np.unique(plan.order).size)
    return {
        "packer": plan.report.get("packer"),
        "max_length": plan.max_length,
        "rows": rows,
        "sequences": sequences,
        "segments": int(plan.order.size),
        "packing_ratio": sequences / max(rows, 1),
        "real_tokens": real,
        "padded_tokens": rows * plan.max_length,
        "padding_tokens": rows * plan.max_length - real,
        "efficiency": plan.efficiency,
        "segments_per_row": {int(k): int(v) for k, v in enumerate(counts.tolist()) if v},
        "dropped_samples": int(plan.report.get("dropped_samples", 0)),
        "dropped_tokens": int(plan.report.get("dropped_tokens", 0)),
        "truncated_tokens": int(plan.report.get("truncated_tokens", 0)),
        "split_samples": int(plan.report.get("split_samples", 0)),
    }


def packed_batch_metrics(plan: EpochPlan, pack_plan: PackPlan) -> dict[str, Any]:
    """:func:`batch_metrics` of an epoch plan over packed rows of ``pack_plan``.

    A packed row is padded to the pack length, not to the longest pack of its
    batch, so padding and efficiency are counted against ``rows * max_length``.
    """
    metrics = batch_metrics(plan, pack_plan.pack_lengths)
    metrics["padded_tokens"] = int(plan.order.size) * pack_plan.max_length
    metrics["padding_tokens"] = metrics["padded_tokens"] - int(pack_plan.seg_length.sum())
    metrics["efficiency"] = pack_plan.efficiency
    return metrics


def over_budget_report(lengths: np.ndarray, limit: int, overflow: str) -> dict[str, Any]:
    """Samples longer than ``limit`` tokens and what the overflow policy does with them.

    ``tokens`` is what those samples hold, ``excess_tokens`` what lies beyond
    the limit (what ``truncate`` cuts); ``drop`` leaves out ``tokens``, ``alone``
    puts each such sample in a batch of its own, over budget.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    over = lengths[lengths > limit]
    return {
        "limit": int(limit),
        "overflow": overflow,
        "samples": int(over.size),
        "tokens": int(over.sum()),
        "excess_tokens": int((over - limit).sum()),
        "longest": int(over.max(initial=0)),
        "share": over.size / max(lengths.size, 1),
    }


def over_budget_line(report: dict[str, Any]) -> str:
    """One line for :func:`over_budget_report`: how many samples exceed, and what happens."""
    if not report["samples"]:
        return f"no sample is longer than the budget allows ({report['limit']:,} tokens)"
    head = (
        f"{report['samples']:,} sample(s) ({report['share']:.1%}, {report['tokens']:,} tokens) "
        f"are longer than the budget allows ({report['limit']:,} tokens): overflow "
        f"'{report['overflow']}' "
    )
    effect = {
        "drop": f"leaves them out ({report['tokens']:,} tokens dropped)",
        "truncate": f"cuts them to the budget ({report['excess_tokens']:,} tokens cut)",
        "alone": "puts each in a batch of its own, over budget",
    }
    return head + effect.get(report["overflow"], "stops with an error")


def depth_report(table: LengthTable, plan: EpochPlan) -> dict[str, Any]:
    """Per depth (the table's ``key``) of a plan over staged samples: samples, batches,
    dropped, and padded efficiency per stage (real steps over the steps its batches
    allocate, each stage padded to its in-batch longest, as staged collation does).

    A table without ``stage_length`` counts one stage of ``length``; a batch of one
    sample over the budget (bucket ``-1``) counts under its sample's depth.
    """
    staged = table.stage_length is not None
    stages = table.stage_length if table.stage_length is not None else table.length[:, None]
    depth = table.key if table.key is not None else np.zeros(len(table), dtype=np.int64)
    sizes = np.diff(plan.offsets)
    width = stages.shape[1]
    real = padded = np.zeros((0, width), dtype=np.int64)
    batch_depth = np.zeros(0, dtype=np.int64)
    if sizes.size:
        rows, firsts = stages[plan.order], plan.offsets[:-1]
        real = np.add.reduceat(rows, firsts, axis=0)
        padded = np.maximum.reduceat(rows, firsts, axis=0) * sizes[:, None]
        batch_depth = depth[plan.order[firsts]]
    depths: dict[str, Any] = {}
    for value in np.unique(depth).tolist():
        mine = batch_depth == value
        count = min(value + 1, width) if staged else 1
        used, alloc = real[mine].sum(axis=0)[:count], padded[mine].sum(axis=0)[:count]
        depths[str(value)] = {
            "samples": int((depth == value).sum()),
            "batches": int(mine.sum()),
            "dropped": int((depth[plan.dropped] == value).sum()),
            "efficiency": float(used.sum() / alloc.sum()) if alloc.sum() else None,
            "stage_efficiency": [
                float(u / a) if a else None
                for u, a in zip(used.tolist(), alloc.tolist(), strict=True)
            ],
        }
    total = int(padded.sum())
    return {
        "batches": int(sizes.size),
        "padded_tokens": total,
        "efficiency": float(real.sum() / total) if total else None,
        "depths": depths,
    }


def ascii_counts(counts: dict[int, int], *, width: int = 40, bars: int = 12) -> list[str]:
    """A bar per key of ``counts`` (e.g. rows per segment count), scaled to ``width``.

    More than ``bars`` keys are grouped into ``bars`` ranges of equal span.
    """
    if not counts:
        return []
    keys = np.asarray(sorted(counts), dtype=np.int64)
    values = np.asarray([counts[k] for k in keys.tolist()], dtype=np.int64)
    if keys.size <= bars:
        labels = [str(k) for k in keys.tolist()]
        sums = values
    else:
        span = -(-(int(keys[-1]) - int(keys[0]) + 1) // bars)
        group = (keys - keys[0]) // span
        sums = np.bincount(group, weights=values).astype(np.int64)
        lows = keys[0] + span * np.arange(sums.size)
        labels = [f"{lo}-{lo + span - 1}" for lo in lows.tolist()]
    top = int(sums.max())
    pad = max(len(label) for label in labels)
    return [
        f"{label:>{pad}} {value:>9,} {'#' * max(round(width * value / top), 1) if value else ''}"
        for label, value in zip(labels, sums.tolist(), strict=True)
    ]


def batch_bytes_report(
    plan: EpochPlan, table: LengthTable, model: Any, *, pack: PackPlan | None = None
) -> dict[str, Any]:
    """Collated bytes per batch of ``plan`` (min, median, mean, max, total) under ``model``.

    :param model: a :class:`~laden.memory.BatchBytes` (how the collation counts).
    :param pack: the pack plan, when ``plan``'s units are its packs.
    """
    from laden.memory import collated_bytes

    lengths = pack.pack_lengths if pack is not None else table.length
    segments = np.diff(pack.offsets) if pack is not None else None
    key = table.key if pack is None else None
    stages = getattr(table, "stage_length", None) if pack is None else None
    per = collated_bytes(plan, lengths, model, key=key, stage_length=stages, segments=segments)
    out: dict[str, Any] = {"layout": model.layout, "batches": int(per.size)}
    if per.size:
        out.update(
            min=int(per.min()),
            median=float(np.median(per)),
            mean=round(float(per.mean()), 1),
            max=int(per.max()),
            total=int(per.sum()),
        )
    return out


# ------------------------------------------------------------- comparisons


@attrs.frozen(kw_only=True)
class BatchingComparison:
    """One epoch of a length table batched three ways, with the metrics of each.

    ``budget`` is the token-budget sampler's plan, ``fixed`` random fixed-size
    batches of ``fixed_batch_size`` (about as many samples per batch), and,
    when a packer was given, ``packed`` the packer's rows batched by the same
    token budget (no bucket edges). ``*_metrics`` are :func:`batch_metrics`
    (:func:`packed_batch_metrics` for packed rows); ``budget_metrics`` also
    holds ``repeat_rate``, the share of the next epoch's batches that repeat
    a batch of this one (:func:`repeat_rate`); ``packing`` is
    :func:`packing_metrics` of ``pack_plan``.
    """

    token_budget: int
    budget: EpochPlan
    budget_metrics: dict[str, Any]
    fixed_batch_size: int
    fixed: EpochPlan
    fixed_metrics: dict[str, Any]
    pack_plan: PackPlan | None = None
    packing: dict[str, Any] | None = None
    packed: EpochPlan | None = None
    packed_metrics: dict[str, Any] | None = None

    @property
    def fixed_over_budget(self) -> int:
        """Random fixed-size batches whose padded size exceeds the token budget."""
        padded = self.fixed.batch_sizes * self.fixed.max_length
        return int((padded > self.token_budget).sum())


def compare_batching(
    table: LengthTable,
    sampler: Any,
    *,
    kernel: Kernel,
    packer: Any = None,
    seed: int = 0,
    fixed_batch_size: Literal["median", "mean"] = "median",
) -> BatchingComparison:
    """Plan one epoch of ``table`` with ``sampler`` and compare it with the alternatives.

    Every plan is made through ``kernel.plan_epoch`` (so announced through
    ``laden_plan_built``); the fixed-size and packed-rows samplers are created
    by ``kernel``.

    :param sampler: a ``token_budget`` sampler strategy.
    :param packer: a packer strategy: also pack the samples into rows and batch
        the rows by the same budget.
    :param fixed_batch_size: the size of the random fixed-size batches: the
        ``median`` size of the budget plan's batches, or the ``mean`` (samples
        over batches).
    """
    budget = kernel.plan_epoch(sampler, table, seed=seed)
    # The next epoch, only to count the batches that come back unchanged.
    again = kernel.plan_epoch(sampler, table, seed=seed, epoch=1)
    if fixed_batch_size == "median":
        size = max(int(np.median(budget.batch_sizes)) if len(budget) else 1, 1)
    else:
        size = max(round(len(table) / max(len(budget), 1)), 1)
    fixed_sampler = kernel.create("sampler", {"name": "fixed", "batch_size": size})
    fixed = kernel.plan_epoch(fixed_sampler, table, seed=seed)
    result = BatchingComparison(
        token_budget=sampler.token_budget,
        budget=budget,
        budget_metrics={
            **batch_metrics(budget, table.length),
            "repeat_rate": repeat_rate(budget, again),
        },
        fixed_batch_size=size,
        fixed=fixed,
        fixed_metrics=batch_metrics(fixed, table.length),
    )
    if packer is None:
        return result
    pack_plan = packer.pack(table)
    rows_sampler = kernel.create(
        "sampler", {"name": "token_budget", "token_budget": sampler.token_budget}
    )
    packed = kernel.plan_epoch(rows_sampler, pack_plan.to_length_table(), seed=seed)
    return attrs.evolve(
        result,
        pack_plan=pack_plan,
        packing=packing_metrics(pack_plan),
        packed=packed,
        packed_metrics=packed_batch_metrics(packed, pack_plan),
    )


def analyze_report(
    table: LengthTable, sampler: Any, comparison: BatchingComparison
) -> dict[str, Any]:
    """What ``laden analyze --json`` prints: lengths, buckets, advice and plan metrics.

    :param sampler: the ``token_budget`` sampler ``comparison`` was made with; its
        bucket edges are the ones reported on, its overflow policy the one
        ``over_budget`` describes.
    :param comparison: :func:`compare_batching` of ``table``; with a packer, its
        ``packing`` is reported too.
    """
    edges = [int(e) for e in sampler.bucket_edges]
    result: dict[str, Any] = {
        "lengths": length_stats(table.length),
        "bucket_edges": edges,
        "buckets": bucket_report(table.length, edges),
        "recommendations": recommendations(table.length, edges),
        "over_budget": over_budget_report(
            table.length, sampler.max_sample_length, sampler.overflow
        ),
        "token_budget_plan": comparison.budget_metrics,
        "random_fixed_plan": {
            "batch_size": comparison.fixed_batch_size,
            **comparison.fixed_metrics,
        },
    }
    if comparison.packing is not None:
        result["packing"] = comparison.packing
    return result
