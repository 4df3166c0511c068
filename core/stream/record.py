"""The stream sample record: a list of sample dicts as columns (:class:`SampleChunk`).

A stream source yields plain dicts (the *stream sample contract*):

- ``input_ids`` (1-D integer array or list), or ``text`` (str), or ``prompt`` +
  ``completion`` (str; tokenized as prompt then completion, ``loss_mask`` 0 on
  the prompt and 1 on the completion);
- optional ``loss_mask`` (0/1 per token), ``sample_id`` (int, unique per source
  run), ``episode_id`` (default -1), ``step_index`` (0), ``difficulty`` (0.0,
  in 0..1), ``success`` (bool or None), ``reward`` (0.0), ``source`` (str) and
  ``meta`` (a JSON-able dict, default ``{}``).

:class:`SampleChunk` holds many of them as one token arena (values + offsets),
an optional loss-mask arena, numpy columns, and ``meta`` as a bytes arena of
compact JSON: no Python object per sample once built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from laden.digest import array_digest
from laden.errors import DataError
from laden.records import Ragged, csr_take, offsets_from_sizes

__all__ = ["SCALAR_COLUMNS", "TOKEN_DTYPE", "SampleChunk", "SampleRows"]

#: Token ids are stored as int32 (what the collated columns hold).
TOKEN_DTYPE = np.dtype(np.int32)
_TOKEN_LIMIT = 1 << 31

#: Per-sample scalar columns and their dtypes.
SCALAR_COLUMNS: Mapping[str, np.dtype[Any]] = {
    "sample_id": np.dtype(np.int64),
    "episode_id": np.dtype(np.int64),
    "step_index": np.dtype(np.int32),
    "difficulty": np.dtype(np.float32),
    "success": np.dtype(np.int8),
    "reward": np.dtype(np.float32),
    "source": np.dtype(np.int16),
}
_KNOWN = frozenset(
    {
        "input_ids",
        "text",
        "prompt",
        "completion",
        "loss_mask",
        "sample_id",
        "episode_id",
        "step_index",
        "difficulty",
        "success",
        "reward",
        "source",
        "meta",
    }
)


def _where(index: int, where: str | None) -> str:
    return f"{where} sample {index}" if where else f"sample {index}"


class SampleRows:
    """Accumulates sample dicts one at a time, then builds a :class:`SampleChunk`.

    Each :meth:`append` checks the sample and stores its fields in plain lists
    (cheap: what ``ReplayBuffer.add`` does per sample); :meth:`build` turns the
    lists into columns in a few numpy calls.

    :param tokenizer: a tokenizer strategy (``encode(text)``) for samples that
        carry ``text`` or ``prompt``/``completion`` instead of ``input_ids``.
    :param where: names the input in errors (``"mock"``, a file name).
    """

    __slots__ = (
        "_mask_rows",
        "_masks",
        "_sources",
        "count",
        "difficulty",
        "episode_id",
        "ids",
        "meta",
        "reward",
        "sample_id",
        "source",
        "step_index",
        "success",
        "tokenizer",
        "where",
    )

    def __init__(self, tokenizer: Any = None, where: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.where = where
        self.clear()

    def clear(self) -> None:
        self.count = 0
        self.ids: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._mask_rows: list[int] = []
        self.sample_id: list[int | None] = []
        self.episode_id: list[int] = []
        self.step_index: list[int] = []
        self.difficulty: list[float] = []
        self.success: list[int] = []
        self.reward: list[float] = []
        self.source: list[int] = []
        self._sources: dict[str, int] = {}
        self.meta: list[bytes] = []

    def __len__(self) -> int:
        return self.count

    def _tokens(self, sample: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        ids = sample.get("input_ids")
        if ids is not None:
            array = ids if type(ids) is np.ndarray else np.asarray(ids)
            if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
                raise DataError(
                    f"input_ids must be a 1-D integer array, got {array.dtype} "
                    f"of shape {array.shape}",
                    file=_where(self.count, self.where),
                )
            return array, None
        text = sample.get("text")
        prompt, completion = sample.get("prompt"), sample.get("completion")
        if text is None and prompt is None:
            raise DataError(
                "sample has none of input_ids, text, prompt + completion",
                file=_where(self.count, self.where),
            )
        if self.tokenizer is None:
            raise DataError(
                "sample has text but no tokenizer was given (pass tokenizer=)",
                file=_where(self.count, self.where),
            )
        if text is not None:
            if not isinstance(text, str):
                raise DataError("text must be a string", file=_where(self.count, self.where))
            return np.asarray(self.tokenizer.encode(text)), None
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DataError(
                "prompt and completion must both be strings", file=_where(self.count, self.where)
            )
        head = np.asarray(self.tokenizer.encode(prompt))
        tail = np.asarray(self.tokenizer.encode(completion))
        mask = np.zeros(head.size + tail.size, dtype=np.uint8)
        mask[head.size :] = 1
        return np.concatenate([head, tail]), mask

    def append(self, sample: Mapping[str, Any]) -> None:
        """Check one sample dict and add its fields (a DataError names the sample)."""
        if type(sample) is not dict and not isinstance(sample, Mapping):
            raise DataError(
                f"a sample must be a dict, got {type(sample).__name__}",
                file=_where(self.count, self.where),
            )
        ids, mask = self._tokens(sample)
        given = sample.get("loss_mask")
        if given is not None:
            mask = np.asarray(given)
            if mask.shape != ids.shape:
                raise DataError(
                    f"loss_mask has {mask.size} values but the sample has {ids.size} tokens",
                    file=_where(self.count, self.where),
                )
        get = sample.get
        success = get("success")
        source = get("source") or ""
        code = self._sources.get(source)
        if code is None:
            code = self._sources[source] = len(self._sources)
        meta = get("meta")
        if meta:
            try:
                raw = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"meta is not JSON-able ({exc})", file=_where(self.count, self.where)
                ) from None
        else:
            raw = b""
        try:
            sample_id = None if (v := get("sample_id")) is None else int(v)
            episode_id = int(get("episode_id", -1))
            step_index = int(get("step_index", 0))
            difficulty = float(get("difficulty", 0.0))
            reward = float(get("reward", 0.0))
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"a scalar field has the wrong type ({exc})", file=_where(self.count, self.where)
            ) from None
        self.sample_id.append(sample_id)
        self.episode_id.append(episode_id)
        self.step_index.append(step_index)
        self.difficulty.append(difficulty)
        self.success.append(-1 if success is None else int(bool(success)))
        self.reward.append(reward)
        self.source.append(code)
        self.meta.append(raw)
        self.ids.append(ids)
        if mask is not None:
            self._masks.append(mask)
            self._mask_rows.append(self.count)
        self.count += 1

    def extend(self, samples: Iterable[Mapping[str, Any]]) -> None:
        for sample in samples:
            self.append(sample)

    def build(self) -> SampleChunk:
        """The accumulated samples as a :class:`SampleChunk`."""
        n = self.count
        sizes = np.fromiter((a.size for a in self.ids), dtype=np.int64, count=n)
        offsets = offsets_from_sizes(sizes)
        if n:
            values = np.concatenate(self.ids)
            if values.size and values.dtype != TOKEN_DTYPE:
                low, high = int(values.min()), int(values.max())
                if low < 0 or high >= _TOKEN_LIMIT:
                    bad = low if low < 0 else high
                    row = int(np.searchsorted(offsets, int(np.argmax(values == bad)), "right")) - 1
                    raise DataError(
                        f"token id {bad} is not in 0..2**31-1", file=_where(row, self.where)
                    )
                values = values.astype(TOKEN_DTYPE)
            elif values.size and int(values.min()) < 0:
                row = int(np.searchsorted(offsets, int(np.argmax(values < 0)), "right")) - 1
                raise DataError("negative token id", file=_where(row, self.where))
        else:
            values = np.zeros(0, dtype=TOKEN_DTYPE)
        loss_mask = None
        if self._masks:
            loss_mask = np.ones(int(offsets[-1]), dtype=np.uint8)
            rows = np.asarray(self._mask_rows, dtype=np.int64)
            where, _ = csr_take(offsets, rows)
            masks = np.concatenate(self._masks)
            if masks.size and not np.isin(masks, (0, 1)).all():
                raise DataError("loss_mask must hold only 0 and 1", file=self.where)
            loss_mask[where] = masks.astype(np.uint8, copy=False)
        ids = self.sample_id
        if None in ids:
            sample_id = np.full(n, -1, dtype=np.int64)
            known = [i for i, v in enumerate(ids) if v is not None]
            sample_id[known] = [int(ids[i] or 0) for i in known]
        else:
            sample_id = np.asarray(ids, dtype=np.int64)
        difficulty = np.asarray(self.difficulty, dtype=np.float32)
        if n and not ((difficulty >= 0) & (difficulty <= 1)).all():
            row = int(np.argmax(~((difficulty >= 0) & (difficulty <= 1))))
            raise DataError(
                f"difficulty must be in 0..1, got {float(difficulty[row])}",
                file=_where(row, self.where),
            )
        meta_sizes = np.fromiter((len(m) for m in self.meta), dtype=np.int64, count=n)
        meta_values = np.frombuffer(b"".join(self.meta), dtype=np.uint8).copy()
        return SampleChunk(
            tokens=values,
            offsets=offsets,
            loss_mask=loss_mask,
            sample_id=sample_id,
            episode_id=np.asarray(self.episode_id, dtype=np.int64),
            step_index=np.asarray(self.step_index, dtype=np.int32),
            difficulty=difficulty,
            success=np.asarray(self.success, dtype=np.int8),
            reward=np.asarray(self.reward, dtype=np.float32),
            source=np.asarray(self.source, dtype=np.int16),
            source_names=tuple(self._sources),
            meta_values=meta_values,
            meta_offsets=offsets_from_sizes(meta_sizes),
        )


@attrs.frozen(kw_only=True, eq=False)
class SampleChunk:
    """Many stream samples as columns: one token arena, numpy columns, a JSON meta arena.

    Row ``i``'s tokens are ``tokens[offsets[i]:offsets[i+1]]``; ``loss_mask``
    (uint8, or None meaning all ones) is parallel to ``tokens``; ``success`` is
    -1 (unknown), 0 or 1; ``source`` indexes ``source_names``; row ``i``'s meta
    is the JSON in ``meta_values[meta_offsets[i]:meta_offsets[i+1]]`` (empty
    bytes mean ``{}``). ``sample_id`` is -1 where a sample had none.
    """

    tokens: np.ndarray
    offsets: np.ndarray
    loss_mask: np.ndarray | None = None
    sample_id: np.ndarray
    episode_id: np.ndarray
    step_index: np.ndarray
    difficulty: np.ndarray
    success: np.ndarray
    reward: np.ndarray
    source: np.ndarray
    source_names: tuple[str, ...] = ()
    meta_values: np.ndarray
    meta_offsets: np.ndarray

    def __attrs_post_init__(self) -> None:
        n = self.offsets.size - 1
        if n < 0 or int(self.offsets[0]) != 0 or int(self.offsets[-1]) != self.tokens.size:
            raise DataError("offsets must start at 0 and end at the number of tokens")
        for name in SCALAR_COLUMNS:
            if getattr(self, name).shape != (n,):
                raise DataError(f"column {name} has {getattr(self, name).size} rows, expected {n}")
        if self.loss_mask is not None and self.loss_mask.shape != self.tokens.shape:
            raise DataError("loss_mask must have one value per token")
        if self.meta_offsets.size != n + 1:
            raise DataError(f"meta_offsets has {self.meta_offsets.size} values, expected {n + 1}")

    # ------------------------------------------------------------- building

    @classmethod
    def from_samples(
        cls,
        samples: Iterable[Mapping[str, Any]],
        *,
        tokenizer: Any = None,
        where: str | None = None,
    ) -> SampleChunk:
        """Columns from sample dicts (``text``/``prompt`` tokenized by ``tokenizer``)."""
        rows = SampleRows(tokenizer, where)
        rows.extend(samples)
        return rows.build()

    @classmethod
    def concatenate(cls, chunks: Sequence[SampleChunk]) -> SampleChunk:
        """One chunk of all rows of ``chunks``, in order (source names merged)."""
        if not chunks:
            return SampleRows().build()
        names: dict[str, int] = {}
        sources = []
        for c in chunks:
            remap = np.asarray([names.setdefault(s, len(names)) for s in c.source_names] or [0])
            sources.append(remap[c.source].astype(np.int16) if len(c) else c.source)
        any_mask = any(c.loss_mask is not None for c in chunks)
        masks = (
            np.concatenate(
                [
                    c.loss_mask if c.loss_mask is not None else np.ones(c.tokens.size, np.uint8)
                    for c in chunks
                ]
            )
            if any_mask
            else None
        )
        cat = np.concatenate
        return cls(
            tokens=cat([c.tokens for c in chunks]),
            offsets=offsets_from_sizes(cat([np.diff(c.offsets) for c in chunks])),
            loss_mask=masks,
            **{
                name: cat([getattr(c, name) for c in chunks])
                for name in SCALAR_COLUMNS
                if name != "source"
            },
            source=cat(sources),
            source_names=tuple(names),
            meta_values=cat([c.meta_values for c in chunks]),
            meta_offsets=offsets_from_sizes(cat([np.diff(c.meta_offsets) for c in chunks])),
        )

    # ------------------------------------------------------------ reading

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    def ragged(self) -> Ragged:
        """The tokens as a :class:`~laden.collate.Ragged` (no copy)."""
        return Ragged(values=self.tokens, offsets=self.offsets)

    def ragged_loss_mask(self) -> Ragged | None:
        if self.loss_mask is None:
            return None
        return Ragged(values=self.loss_mask, offsets=self.offsets)

    def meta(self, i: int) -> dict[str, Any]:
        """Row ``i``'s meta dict (decoded on demand)."""
        raw = self.meta_values[self.meta_offsets[i] : self.meta_offsets[i + 1]].tobytes()
        return json.loads(raw) if raw else {}

    def source_name(self, i: int) -> str:
        return self.source_names[int(self.source[i])] if self.source_names else ""

    def sample(self, i: int) -> dict[str, Any]:
        """Row ``i`` back as a sample dict of the stream contract."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        out: dict[str, Any] = {"input_ids": self.tokens[lo:hi].copy()}
        if self.loss_mask is not None:
            out["loss_mask"] = self.loss_mask[lo:hi].copy()
        success = int(self.success[i])
        out.update(
            sample_id=int(self.sample_id[i]),
            episode_id=int(self.episode_id[i]),
            step_index=int(self.step_index[i]),
            difficulty=float(self.difficulty[i]),
            success=None if success < 0 else bool(success),
            reward=float(self.reward[i]),
            source=self.source_name(i),
            meta=self.meta(i),
        )
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self.sample(i)

    def take(self, rows: Any) -> SampleChunk:
        """The given rows, in that order (vectorized)."""
        rows = np.asarray(rows, dtype=np.int64)
        where, offsets = csr_take(self.offsets, rows)
        mwhere, moffsets = csr_take(self.meta_offsets, rows)
        return SampleChunk(
            tokens=self.tokens[where],
            offsets=offsets,
            loss_mask=None if self.loss_mask is None else self.loss_mask[where],
            **{name: getattr(self, name)[rows] for name in SCALAR_COLUMNS},
            source_names=self.source_names,
            meta_values=self.meta_values[mwhere],
            meta_offsets=moffsets,
        )

    def digest(self) -> str:
        """A digest of every column (token content included)."""
        return array_digest(
            self.tokens,
            self.offsets,
            self.loss_mask,
            *(getattr(self, name) for name in SCALAR_COLUMNS),
            np.frombuffer("\x00".join(self.source_names).encode(), dtype=np.uint8),
            self.meta_values,
            self.meta_offsets,
        )

    def __repr__(self) -> str:
        return f"<SampleChunk {len(self):,} samples, {self.num_tokens:,} tokens>"
