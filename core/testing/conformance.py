"""Conformance checks: any strategy, ours or a third party's, held to the same contract.

One check per kind: ``check_tokenizer``, ``check_source``, ``check_packer``,
``check_sampler``, ``check_writer``, ``check_backend``, ``check_executor``,
``check_generator``. Each builds the strategy from its class and config, runs
it through generated inputs (hypothesis where the input space is large) and
asserts every rule its kind's protocol in :mod:`laden.kinds` states; a broken
rule is an ``AssertionError`` saying which.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "check_backend",
    "check_executor",
    "check_generator",
    "check_packer",
    "check_sampler",
    "check_source",
    "check_tokenizer",
    "check_writer",
]


# ---------------------------------------------------------------- conformance


def _check_plan_invariants(sampler: Any, table: Any, plan: Any) -> None:
    """Every sample once (or dropped and reported), budget and max_length respected."""
    n = len(table)
    order = np.asarray(plan.order)
    dropped = np.asarray(plan.dropped)
    seen = np.concatenate([order, dropped])
    assert seen.size == n, f"{seen.size} placed or dropped, table has {n}"
    assert np.array_equal(np.sort(seen), np.arange(n)), "a sample is missing or repeated"
    reported = plan.report.get("dropped", {}) if hasattr(plan, "report") else {}
    assert sum(reported.values()) == dropped.size, "drops are not all reported in plan.report"
    sizes = np.diff(plan.offsets)
    assert (sizes > 0).all(), "empty batch"
    truncated = set(np.asarray(plan.truncated).tolist())
    lengths = table.length
    for spec in plan:
        members = lengths[spec.indices]
        if truncated.isdisjoint(spec.indices.tolist()):
            assert members.max() == spec.max_length, f"batch {spec.index}: max_length is wrong"
        else:
            assert members.max() >= spec.max_length
    budget = getattr(sampler, "token_budget", None)
    if budget is not None:
        quadratic = getattr(sampler, "cost", "linear") == "quadratic"
        cost = sizes * (plan.max_length**2 if quadratic else plan.max_length)
        alone = np.asarray(plan.bucket) == -1
        assert (cost[~alone] <= budget).all(), "a batch exceeds the token budget"
        assert (sizes[alone] == 1).all(), "an over-budget batch holds more than one sample"
    max_batch_size = getattr(sampler, "max_batch_size", None) or getattr(
        sampler, "batch_size", None
    )
    if max_batch_size is not None:
        assert (sizes <= max_batch_size).all(), "a batch is larger than allowed"


def check_sampler(cls: type[Any], *, max_examples: int = 60, **config: Any) -> None:
    """Check that a sampler class keeps the contract every sampler must keep.

    Property-based (hypothesis) over random length tables, including empty and
    single-sample ones:

    - every sample appears exactly once per epoch, unless dropped by policy,
      and then it is in ``plan.dropped`` and counted in ``plan.report["dropped"]``;
    - ``max_length`` of a batch is its longest member (or less where truncated);
    - a ``token_budget`` (and ``max_batch_size`` / ``batch_size``) is respected;
    - the same seed and epoch give an identical plan; another epoch gives
      another order (for samplers that shuffle);
    - an empty table gives no batches, a single sample one batch (or a drop).

    :param cls: the sampler class.
    :param config: its config fields.
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    import laden

    sampler = cls(**config)

    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        lengths=arrays(np.int64, st.integers(0, 300), elements=st.integers(0, 3000)),
        seed=st.integers(0, 2**32 - 1),
        epoch=st.integers(0, 1000),
    )
    def properties(lengths: np.ndarray, seed: int, epoch: int) -> None:
        table = laden.LengthTable.from_lengths(lengths)
        try:
            plan = sampler.plan_epoch(table, epoch=epoch, seed=seed)
        except laden.DataError:
            # A policy of "error" may refuse over-long samples, and only then.
            limit = getattr(sampler, "max_sample_length", None)
            assert limit is not None
            assert int(lengths.max()) > limit
            return
        _check_plan_invariants(sampler, table, plan)
        again = sampler.plan_epoch(table, epoch=epoch, seed=seed)
        assert plan.digest() == again.digest(), "same seed and epoch gave another plan"

    properties()

    empty = sampler.plan_epoch(laden.LengthTable.from_lengths(np.zeros(0, np.int64)))
    assert len(empty) == 0
    assert empty.order.size == 0
    one = sampler.plan_epoch(laden.LengthTable.from_lengths([5]))
    assert (len(one), one.order.tolist()) == (1, [0]) or one.dropped.tolist() == [0]

    if getattr(sampler, "shuffle", False):
        # Equal lengths: only the shuffle decides the order.
        table = laden.LengthTable.from_lengths(np.full(512, 7))
        first = sampler.plan_epoch(table, epoch=0, seed=1)
        second = sampler.plan_epoch(table, epoch=1, seed=1)
        assert not np.array_equal(first.order, second.order), "epochs repeat the same order"
        other_seed = sampler.plan_epoch(table, epoch=0, seed=2)
        assert not np.array_equal(first.order, other_seed.order), "seed is ignored"
        # Not seed + epoch: seed 1 epoch 1 must differ from seed 2 epoch 0.
        assert not np.array_equal(second.order, other_seed.order), "seed and epoch are added"


def _check_pack_invariants(packer: Any, table: Any, plan: Any) -> None:
    lengths = table.length
    max_length = packer.max_length
    dropped = np.asarray(plan.dropped)
    assert plan.pack_lengths.max(initial=0) <= max_length, "a pack is longer than max_length"
    assert (np.diff(plan.offsets) > 0).all(), "an empty pack"
    assert (plan.seg_length >= 0).all()
    # Every token of every kept sample is covered exactly once, unless the policy cut it.
    covered = np.bincount(plan.order, weights=plan.seg_length, minlength=lengths.size)
    kept = np.ones(lengths.size, dtype=bool)
    kept[dropped] = False
    assert not np.isin(plan.order, dropped).any(), "a dropped sample was packed"
    if packer.overflow in ("split", "drop", "error"):
        assert np.array_equal(covered[kept], lengths[kept]), "tokens lost or repeated"
    else:  # truncate
        assert np.array_equal(covered[kept], np.minimum(lengths, max_length)[kept])
    assert plan.report.get("dropped_samples", 0) == dropped.size, "drops are not reported"
    # Segments of one sample tile it without gaps: starts are 0, L, 2L, ...
    order = np.lexsort((plan.seg_start, plan.order))
    sample, start, seg = plan.order[order], plan.seg_start[order], plan.seg_length[order]
    first = np.ones(sample.size, dtype=bool)
    first[1:] = sample[1:] != sample[:-1]
    previous_end = np.zeros_like(start)
    previous_end[1:] = (start + seg)[:-1]
    expected = np.where(first, 0, previous_end)
    assert np.array_equal(start, expected), "segments of a sample overlap or leave gaps"
    cap = getattr(packer, "max_segments_per_pack", None)
    if cap is not None:
        assert np.diff(plan.offsets).max(initial=0) <= cap, "a pack has too many segments"


def check_packer(cls: type[Any], *, max_examples: int = 60, **config: Any) -> None:
    """Check that a packer class keeps the contract every packer must keep.

    Property-based (hypothesis): every sequence is placed exactly once, or
    split into segments that cover it exactly, or dropped/truncated and
    reported; no pack is longer than ``max_length``; no pack is empty; the same
    input gives the identical plan.

    :param cls: the packer class.
    :param config: its config fields (``max_length`` among them).
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    import laden

    packer = cls(**config)
    top = 3 * packer.max_length

    @settings(
        max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(lengths=arrays(np.int64, st.integers(0, 200), elements=st.integers(0, top)))
    def properties(lengths: np.ndarray) -> None:
        table = laden.LengthTable.from_lengths(lengths)
        try:
            plan = packer.pack(table)
        except laden.DataError:
            assert packer.overflow == "error"
            assert int(lengths.max()) > packer.max_length
            return
        _check_pack_invariants(packer, table, plan)
        again = packer.pack(table)
        for name in ("order", "offsets", "seg_length", "seg_start"):
            assert np.array_equal(getattr(plan, name), getattr(again, name)), "not deterministic"

    properties()
    empty = packer.pack(laden.LengthTable.from_lengths(np.zeros(0, np.int64)))
    assert len(empty) == 0


def check_backend(cls: type[Any], *, max_examples: int = 40, **config: Any) -> None:
    """Check that a backend gives the same batch, value for value, as the ``numpy`` reference.

    Property-based (hypothesis): random samples (with and without loss masks)
    in padded and in packed layouts are collated by ``cls(**config)`` and by
    the numpy backend with the same collation settings; every column must
    have the same shape, the same values and the same dtype (integers in the
    configured width, ``int_dtype = "auto"`` resolving as numpy's does except
    for the backend's ``wide`` columns, which are int64; ``cu_seqlens`` int32,
    ``sample_ids`` int64, masks bool), and ``max_seqlen`` is a plain ``int``.

    :param cls: the backend class (a :class:`laden.collate.CollatingBackend`).
    :param config: its config fields.
    """
    import attrs
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import laden
    from laden.collate import BatchLayout, Ragged
    from laden.plugins.backends.numpy import NumpyBackend
    from laden.plugins.packers.best_fit import BestFitPacker

    backend = cls(**config)
    fields = attrs.fields(NumpyBackend)
    shared = {f.name: getattr(backend, f.name) for f in fields if hasattr(backend, f.name)}
    reference = NumpyBackend(**shared)

    @settings(
        max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12),
        packed=st.booleans(),
        masked=st.booleans(),
        data=st.data(),
    )
    def properties(lengths: list[int], packed: bool, masked: bool, data: Any) -> None:
        rng = np.random.default_rng(sum(lengths))
        tokens = Ragged.from_sequences([rng.integers(1, 1000, n) for n in lengths])
        mask = Ragged(values=rng.random(tokens.values.size) < 0.7, offsets=tokens.offsets)
        if packed:
            width = data.draw(st.integers(max(max(lengths), 1), 64), label="max_length")
            plan = BestFitPacker(max_length=width).pack(
                laden.LengthTable.from_lengths(np.asarray(lengths))
            )
            layout = BatchLayout.packed(plan, np.arange(len(plan)))
        else:
            chosen = data.draw(st.permutations(range(len(lengths))), label="order")
            layout = BatchLayout.padded(np.asarray(chosen), tokens.lengths)
        want = dict(reference.collate(layout, tokens, loss_mask=mask if masked else None))
        got = backend.collate(layout, tokens, loss_mask=mask if masked else None)
        assert set(got) == set(want), f"columns differ: {sorted(got)} vs {sorted(want)}"
        for key, expected in want.items():
            value = backend.as_numpy(got[key])
            if isinstance(expected, int):
                assert isinstance(value, int), f"{key}: {value!r} is not an int"
                assert value == expected, f"{key}: {value!r}, not {expected!r}"
                continue
            assert value.shape == expected.shape, f"{key}: shape {value.shape}"
            dtype = np.dtype(np.int64) if key in getattr(backend, "wide", ()) else expected.dtype
            assert value.dtype == dtype, f"{key}: {value.dtype}, not {dtype}"
            assert np.array_equal(value, expected), f"{key}: values differ from numpy"

    properties()


# ------------------------------------------------------------------ helpers


def _equal(a: Any, b: Any) -> bool:
    """Whether two sample values are equal (arrays by dtype kind and values; nested)."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        return x.shape == y.shape and (x.size == 0 or bool(np.array_equal(x, y)))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b) and type(a) is type(b)


def _copy(obj: Any, what: str) -> Any:
    """``obj`` through pickle, as a worker process receives it."""
    try:
        return pickle.loads(pickle.dumps(obj))
    except Exception as exc:
        raise AssertionError(f"the {what} cannot be pickled (workers need it): {exc}") from exc


# ---------------------------------------------------------------- tokenizer

#: Texts every tokenizer encodes, beside generated ones: empty, whitespace only,
#: several scripts, emoji, line breaks and a long run.
_TEXTS = (
    "",
    " ",
    "hello world",
    "  two  spaces\tand\ttabs\n",
    "naïve café, ünïcödé",
    "日本語のテキスト",
    "emoji 🙂🚀 end",
    "x\ny\r\nz",
    "a" * 2000,
)


def check_tokenizer(
    cls: type[Any], *, texts: Sequence[str] = (), max_examples: int = 60, **config: Any
) -> None:
    """Check that a tokenizer class keeps the contract every tokenizer must keep.

    Over fixed texts, ``texts`` and hypothesis-generated ones:

    - ``encode(text)`` is a 1-D integer array of ids ``>= 0`` (below
      ``vocab_size`` where the tokenizer has one), the same on every call;
    - ``count(texts)`` gives one integer per text, equal to ``len(encode(text))``
      (``count([])`` is empty);
    - a pickled copy (what a worker gets) encodes and counts the same;
    - ``fingerprint()`` is a non-empty string, the same on every call, for a
      pickled copy and for a new instance of the same config.

    :param cls: the tokenizer class.
    :param texts: more texts to check (e.g. from the domain it is made for).
    :param config: its config fields.
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    tokenizer = cls(**config)
    copy = _copy(tokenizer, "tokenizer")
    vocab = getattr(tokenizer, "vocab_size", None)

    def agree(batch: list[str]) -> None:
        counts = np.asarray(tokenizer.count(batch))
        assert counts.shape == (len(batch),), (
            f"count() of {len(batch)} texts gave shape {counts.shape}, not one count per text"
        )
        assert counts.dtype.kind in "iu", f"count() gave {counts.dtype}, not integers"
        assert np.array_equal(np.asarray(copy.count(batch)), counts), (
            "a pickled copy counts differently"
        )
        for text, n in zip(batch, counts.tolist(), strict=True):
            ids = tokenizer.encode(text)
            assert isinstance(ids, np.ndarray), f"encode() gave {type(ids).__name__}, not an array"
            assert ids.ndim == 1, f"encode() gave shape {ids.shape}, not a 1-D array"
            assert ids.dtype.kind in "iu", f"encode() gave {ids.dtype}, not integer ids"
            assert ids.size == n, f"count() says {n} tokens for {text!r}, encode() gives {ids.size}"
            assert (ids >= 0).all(), f"encode({text!r}) gave a negative id"
            if vocab is not None:
                assert (ids < vocab).all(), f"encode({text!r}) gave an id >= vocab_size {vocab}"
            assert np.array_equal(tokenizer.encode(text), ids), "encode() is not deterministic"
            assert np.array_equal(copy.encode(text), ids), "a pickled copy encodes differently"

    agree(list(_TEXTS) + list(texts))
    agree([])

    @settings(
        max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(batch=st.lists(st.text(max_size=120), max_size=6))
    def properties(batch: list[str]) -> None:
        agree(batch)

    properties()

    fingerprint = tokenizer.fingerprint()
    assert isinstance(fingerprint, str), "fingerprint() must be a string"
    assert fingerprint, "fingerprint() must not be empty"
    assert tokenizer.fingerprint() == fingerprint, "fingerprint() changes between calls"
    assert copy.fingerprint() == fingerprint, "a pickled copy has another fingerprint"
    assert cls(**config).fingerprint() == fingerprint, "an equal config gives another fingerprint"


# ------------------------------------------------------------------- source


def _take(source: Any, limit: int) -> list[Any]:
    out = []
    for sample in source:
        out.append(sample)
        if len(out) >= limit:
            break
    return out


def _check_sample(sample: Any, where: str) -> None:
    assert isinstance(sample, Mapping), f"{where}: a sample is a mapping, got {type(sample)}"
    assert all(isinstance(k, str) for k in sample), f"{where}: a field name is not a string"
    ids = sample.get("input_ids")
    if ids is not None:
        array = np.asarray(ids)
        assert array.ndim == 1, f"{where}: input_ids has shape {array.shape}, not 1-D"
        assert array.size == 0 or array.dtype.kind in "iu", f"{where}: input_ids not integers"
        assert (array >= 0).all(), f"{where}: input_ids holds a negative id"
    else:
        for field in ("text", "prompt", "completion"):
            if sample.get(field) is not None:
                assert isinstance(sample[field], str), f"{where}: {field} is not a string"
    mask = sample.get("loss_mask")
    if mask is not None:
        values = np.asarray(mask)
        assert values.ndim == 1, f"{where}: loss_mask has shape {values.shape}, not 1-D"
        assert np.isin(values, (0, 1)).all(), f"{where}: loss_mask holds values other than 0, 1"
        if ids is not None:
            assert values.size == np.asarray(ids).size, (
                f"{where}: loss_mask has {values.size} values for {np.asarray(ids).size} tokens"
            )


def _check_measure(part: Any, start: int, end: int) -> None:
    from laden.records import ChunkMeasure

    where = f"measure({start}, {end})"
    assert isinstance(part, ChunkMeasure), f"{where} gave {type(part)}, not a ChunkMeasure"
    assert part.start == start, f"{where}: start is {part.start}"
    n = part.length.size
    for name in ("offset", "line", "has_id"):
        size = np.asarray(getattr(part, name)).size
        assert size == n, f"{where}: {name} has {size} rows, length has {n}"
    if part.key is not None:
        assert part.key.size == n, f"{where}: key has {part.key.size} rows, length has {n}"
    if part.ids is not None:
        assert len(part.ids) == n, f"{where}: ids has {len(part.ids)} rows, length has {n}"
    assert (part.length >= 0).all(), f"{where}: a negative length"
    offsets = part.offset
    assert ((offsets >= start) & (offsets < end)).all(), f"{where}: an offset outside the range"
    assert (np.diff(offsets) > 0).all(), f"{where}: offsets are not ascending"
    assert ((part.line >= 0) & (part.line < part.lines)).all(), f"{where}: a line out of range"
    assert all(0 <= line < part.lines for line, _ in part.errors), f"{where}: error line range"
    assert part.blank >= 0


def _joined(parts: list[Any]) -> dict[str, Any]:
    """Columns of consecutive measured ranges as one (lines counted from the first)."""
    base = 0
    errors: list[tuple[int, str]] = []
    lines = []
    for part in parts:
        errors += [(base + line, reason) for line, reason in part.errors]
        lines.append(part.line + base)
        base += part.lines

    def cat(arrays: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)

    keyed = any(p.key is not None for p in parts)
    with_ids = any(p.ids is not None for p in parts)
    return {
        "length": cat([p.length for p in parts], np.int64),
        "offset": cat([p.offset for p in parts], np.int64),
        "line": cat(lines, np.int64),
        "has_id": cat([np.asarray(p.has_id, dtype=bool) for p in parts], bool),
        "key": cat(
            [p.key if p.key is not None else np.full(p.length.size, -1) for p in parts], np.int64
        )
        if keyed
        else None,
        "ids": [v for p in parts for v in (p.ids or [None] * p.length.size)] if with_ids else None,
        "errors": errors,
        "lines": base,
        "blank": sum(p.blank for p in parts),
    }


def _check_indexed(source: Any, samples: list[Any], tokenizer: Any, limit: int) -> None:
    """The IndexedSource rules (see :class:`laden.kinds.IndexedSource`)."""
    from laden.digest import file_digest
    from laden.kinds import SAMPLE_FIELDS

    path = source.path
    size = os.path.getsize(path)
    assert source.on_error in ("error", "skip"), f"on_error is {source.on_error!r}"
    for column in SAMPLE_FIELDS:
        assert isinstance(source.field_name(column), str), f"field_name({column!r}) is no string"

    fingerprint = source.fingerprint()
    assert fingerprint == source.fingerprint(), "fingerprint() changes between calls"
    assert fingerprint == file_digest(path), "fingerprint() is not the digest of the file's bytes"
    hashed: list[int] = []
    assert source.fingerprint(progress=hashed.append) == fingerprint
    assert sum(hashed) == size, f"progress reported {sum(hashed)} bytes hashed of {size}"

    chunks = [(int(a), int(b)) for a, b in source.chunks()]
    assert chunks == [(int(a), int(b)) for a, b in source.chunks()], "chunks() changes"
    position = 0
    with open(path, "rb") as f:
        for start, end in chunks:
            assert start == position, (
                f"chunk ({start}, {end}) does not start where the previous ended ({position}): "
                "chunks must cover the file without gap or overlap"
            )
            assert end > start, f"chunk ({start}, {end}) is empty"
            if start:
                f.seek(start - 1)
                assert f.read(1) == b"\n", f"chunk ({start}, {end}) does not start at a line start"
            position = end
    assert position == size, f"chunks end at byte {position}, the file has {size}"

    whole = source.measure(0, size, tokenizer)
    _check_measure(whole, 0, size)
    parts = [source.measure(a, b, tokenizer) for a, b in chunks]
    for part, (a, b) in zip(parts, chunks, strict=True):
        _check_measure(part, a, b)
    joined = _joined(parts)
    for name, value in joined.items():
        expected = getattr(whole, name)
        assert _equal(value, expected), (
            f"measuring the chunks one by one gives another {name} than measuring the whole file"
        )
    worker = _copy(source, "source")
    first = chunks[0] if chunks else (0, 0)
    assert _equal(
        worker.measure(*first, tokenizer).length, source.measure(*first, tokenizer).length
    )

    rows = list(source.read_at(whole.offset))
    assert len(rows) == whole.offset.size, (
        f"read_at() of {whole.offset.size} offsets gave {len(rows)} samples"
    )
    backwards = list(source.read_at(whole.offset[::-1]))
    assert _equal(backwards[::-1], rows), "read_at() does not follow the order of the offsets"
    for i, row in enumerate(rows):
        _check_sample(row, f"read_at(offset {int(whole.offset[i])})")
        ids = row.get("input_ids")
        n = len(ids) if ids is not None else int(tokenizer.count([row["text"]])[0])
        assert n == whole.length[i], (
            f"the sample at offset {int(whole.offset[i])} has {n} tokens, measure() found "
            f"{int(whole.length[i])}"
        )
    if not whole.errors:  # then iteration yields exactly the measured rows
        assert _equal(rows[:limit], samples[:limit]), (
            "read_at() at the measured offsets does not give the samples iteration yields"
        )


def check_source(
    cls: type[Any], *, tokenizer: Any = None, limit: int = 1000, **config: Any
) -> None:
    """Check that a source class keeps the contract every source must keep.

    Every source (:class:`laden.kinds.Source`): iterating yields mappings with
    string keys, ``input_ids`` a 1-D sequence of non-negative integers,
    ``text``, ``prompt``, ``completion`` (without ids) strings, ``loss_mask``
    one 0 or 1 per token; a
    second iteration and a pickled copy yield the same samples (the first
    ``limit``, so an endless stream can be checked).

    An :class:`laden.kinds.IndexedSource` besides: ``fingerprint()`` is the
    file's digest (reporting its progress); ``chunks()`` start at line starts
    and cover the file in order without gap or overlap; each chunk's
    ``measure`` is consistent, and the chunks measured one by one give what
    measuring the whole file gives; ``read_at`` at the measured offsets returns
    samples in the order asked, each with the measured number of tokens, and
    (when no row is malformed) the samples iteration yields.

    :param cls: the source class.
    :param tokenizer: measures text rows (default: the ``bytes`` tokenizer).
    :param limit: samples compared from iteration.
    :param config: its config fields.
    """
    from laden.kinds import IndexedSource

    source = cls(**config)
    samples = _take(source, limit)
    for i, sample in enumerate(samples):
        _check_sample(sample, f"sample {i}")
    assert _equal(_take(source, limit), samples), "iterating twice gives other samples"
    assert _equal(_take(_copy(source, "source"), limit), samples), (
        "a pickled copy yields other samples"
    )
    if isinstance(source, IndexedSource):
        if tokenizer is None:
            from laden.plugins.tokenizers.bytes import BytesTokenizer

            tokenizer = BytesTokenizer()
        _check_indexed(source, samples, tokenizer, limit)


# ------------------------------------------------------------------- writer


def _writer_batch() -> dict[str, np.ndarray]:
    """Columns of every shape and dtype batch files hold (0-d and empty included)."""
    rng = np.random.default_rng(7)
    return {
        "input_ids": rng.integers(0, 50_000, (3, 5)).astype(np.int32),
        "loss_mask": rng.random((3, 5)) < 0.7,
        "position_ids": np.tile(np.arange(5, dtype=np.int64), (3, 1)),
        "cu_seqlens": np.array([0, 4, 9, 15], dtype=np.int32),
        "sample_ids": np.array([11, 2, 2**40], dtype=np.int64),
        "weights": rng.random(3).astype(np.float32),
        "features": rng.normal(size=(2, 3, 4)),
        "half": rng.random(4).astype(np.float16),
        "bytes": np.arange(6, dtype=np.uint8),
        "empty": np.zeros(0, dtype=np.int64),
        "max_seqlen": np.array(6, dtype=np.int64),
    }


#: The metadata every writer check writes (``fingerprint`` beside BATCH_META).
_WRITER_META = {"epoch": 3, "step": 14, "rank": 1, "padding": True, "fingerprint": "ab" * 16}


def _write(writer: Any, path: Path, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    with open(path, "wb") as f:
        writer.write(f, arrays, meta)


@contextlib.contextmanager
def _no_unpickling() -> Iterator[None]:
    """Make every use of the standard unpickler inside the block an error."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("reading a batch file called the unpickler")

    saved = pickle.load, pickle.loads, pickle.Unpickler
    pickle.load = pickle.loads = pickle.Unpickler = refuse  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        pickle.load, pickle.loads, pickle.Unpickler = saved  # type: ignore[misc]


def _check_read(got: Any, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    from laden.kinds import BATCH_META

    assert isinstance(got, Mapping), f"read gave {type(got)}, not a mapping of arrays"
    want = set(arrays) | {k for k in BATCH_META if k in meta}
    assert set(got) == want, f"read gave columns {sorted(got)}, wrote {sorted(want)}"
    for key, expected in arrays.items():
        value = np.asarray(got[key])
        assert value.dtype == expected.dtype, (
            f"{key}: read back {value.dtype}, wrote {expected.dtype}"
        )
        assert value.shape == expected.shape, (
            f"{key}: read back {value.shape}, wrote {expected.shape}"
        )
        assert np.array_equal(value, expected), f"{key}: read back other values"
    for key in BATCH_META:
        if key in meta:
            value = np.asarray(got[key])
            assert value.shape == (), f"{key}: read back shape {value.shape}, not a 0-d array"
            assert value.item() == meta[key], (
                f"{key}: read back {value.item()!r}, wrote {meta[key]!r}"
            )


def check_writer(cls: type[Any], *, rerun_delay: float = 1.1, **config: Any) -> None:
    """Check that a writer class keeps the contract every writer must keep.

    - ``suffix`` starts with ``.``;
    - ``read`` (and ``read_bytes`` where offered) returns every column written,
      with its dtype, shape and values (0-d, empty, 3-D, float16, uint8, int64
      beyond int32 included), plus each :data:`laden.kinds.BATCH_META` key of
      the metadata as a 0-d array, and nothing else;
    - nothing is pickled: writing an object array raises, and reading never
      calls the standard unpickler;
    - the same batch written again ``rerun_delay`` seconds later gives
      identical bytes (no timestamps, no random ids).

    :param cls: the writer class.
    :param config: its config fields.
    """
    writer = cls(**config)
    suffix = writer.suffix
    assert isinstance(suffix, str), f"suffix {suffix!r} must be a string"
    assert suffix.startswith("."), f"suffix {suffix!r} must start with '.'"
    assert len(suffix) > 1, "suffix must name a format, not only '.'"
    arrays = _writer_batch()
    with tempfile.TemporaryDirectory(prefix="laden-check-writer-") as tmp:
        first = Path(tmp) / f"first{suffix}"
        _write(writer, first, arrays, _WRITER_META)
        with _no_unpickling():
            got = writer.read(str(first))
        _check_read(got, arrays, _WRITER_META)
        if hasattr(writer, "read_bytes"):
            buffer = np.fromfile(first, dtype=np.uint8)
            with _no_unpickling():
                got = writer.read_bytes(buffer, str(first))
            _check_read(got, arrays, _WRITER_META)
        bare = Path(tmp) / f"bare{suffix}"
        _write(writer, bare, {"x": arrays["input_ids"]}, {})
        _check_read(writer.read(str(bare)), {"x": arrays["input_ids"]}, {})

        objects = np.empty(2, dtype=object)
        objects[:] = [{"a": 1}, "b"]
        try:
            _write(writer, Path(tmp) / f"objects{suffix}", {"x": objects}, _WRITER_META)
        except Exception:
            pass  # refused: it would need pickle to read back
        else:
            raise AssertionError("an object array was written (reading it back needs pickle)")

        time.sleep(rerun_delay)
        second = Path(tmp) / f"second{suffix}"
        _write(writer, second, arrays, _WRITER_META)
        assert first.read_bytes() == second.read_bytes(), (
            "the same batch written again gives other bytes (a timestamp or random id?)"
        )


# ----------------------------------------------------------------- executor


def _late_square(i: int) -> int:
    """Work that finishes out of order: later items sooner, in a round of five."""
    time.sleep(0.002 * (4 - i % 5))
    return i * i


def _fail_at_five(i: int) -> int:
    if i == 5:
        raise ValueError("task 5 failed on purpose")
    return i


def check_executor(
    cls: type[Any], *, items: int = 24, ahead: int = 1000, timeout: float = 60.0, **config: Any
) -> None:
    """Check that an executor class keeps the contract every executor must keep.

    - ``map`` yields every result in input order, though work finishes out of
      order; no items give no results;
    - ``progress(done, total)`` is called once per result, ``done`` from 1 up,
      ``total`` as given;
    - it is lazy: mapping an endless iterator and reading a few results pulls
      at most ``ahead`` items more than were read, and closing the results
      early returns within ``timeout`` seconds;
    - a task that raises surfaces as that exception, same type and message,
      in the caller.

    :param cls: the executor class.
    :param items: how many items the order and progress checks map.
    :param config: its config fields.
    """
    executor = cls(**config)
    numbers = list(range(items))
    calls: list[tuple[int, int | None]] = []
    results = list(
        executor.map(_late_square, numbers, total=items, progress=lambda d, t: calls.append((d, t)))
    )
    assert results == [i * i for i in numbers], "results are not in input order"
    assert calls == [(i, items) for i in range(1, items + 1)], (
        f"progress was called with {calls[:5]}..., not (1, {items}), (2, {items}), ..."
    )
    assert list(executor.map(_late_square, [])) == [], "no items must give no results"

    pulled = 0
    read = 3

    def endless() -> Iterator[int]:
        nonlocal pulled
        while True:
            pulled += 1
            if pulled > read + ahead:
                raise AssertionError(
                    f"map() pulled more than {ahead} items ahead of the results read: "
                    "it must consume its input lazily"
                )
            yield pulled

    results = executor.map(_late_square, endless())
    got = [next(results) for _ in range(read)]
    assert got == [1, 4, 9], f"the first results of an endless input are {got}"
    started = time.monotonic()
    close: Callable[[], object] | None = getattr(results, "close", None)
    if close is not None:
        close()
    assert time.monotonic() - started < timeout, "closing the results early did not return"
    assert pulled <= read + ahead

    surfaced: BaseException | None = None
    try:
        list(executor.map(_fail_at_five, numbers))
    except ValueError as exc:
        surfaced = exc
    assert surfaced is not None, "a task that raised did not raise ValueError in the caller"
    assert "task 5 failed on purpose" in str(surfaced), f"the error surfaced as {surfaced!r}"


# ---------------------------------------------------------------- generator


def check_generator(
    cls: type[Any],
    *,
    params: Mapping[str, Any] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    **config: Any,
) -> None:
    """Check that a generator class keeps the contract every generator must keep.

    - ``generate(params, seed)`` returns a non-empty mapping of field name to
      numeric array (bool, integer, float or complex, never objects), and
      leaves ``params`` as it was;
    - the same params and seed give identical arrays, also from a pickled
      copy and a new instance of the same config;
    - different seeds give different samples.

    :param cls: the generator class.
    :param params: the parameters of one sweep point (default: none).
    :param seeds: seeds to generate with (at least two).
    :param config: its config fields.
    """
    assert len(set(seeds)) >= 2, "check_generator needs at least two different seeds"
    generator = cls(**config)
    copy = _copy(generator, "generator")
    fresh = cls(**config)
    point = dict(params or {})
    before = pickle.dumps(point)
    outputs = []
    for seed in seeds:
        out = generator.generate(point, seed)
        assert isinstance(out, Mapping), f"generate() gave {type(out)}, not a mapping of arrays"
        assert out, "generate() gave an empty mapping"
        for key, value in out.items():
            array = np.asarray(value)
            assert array.dtype.kind in "biufc", f"{key}: {array.dtype} is not a numeric array"
        assert pickle.dumps(point) == before, "generate() changed its params"
        for other, what in (
            (generator, "another call"),
            (copy, "a pickled copy"),
            (fresh, "a new instance"),
        ):
            again = other.generate(point, seed)
            assert _equal(dict(again), dict(out)), (
                f"{what} with seed {seed} generated another sample"
            )
            assert all(np.asarray(again[k]).dtype == np.asarray(out[k]).dtype for k in out)
        outputs.append(out)
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not _equal(dict(outputs[i]), dict(outputs[j])), (
                f"seeds {seeds[i]} and {seeds[j]} generated the same sample: is the seed used?"
            )
