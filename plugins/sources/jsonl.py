"""``jsonl``: an offline dataset of JSON lines, readable at random by byte offset."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.digest import file_digest
from laden.errors import DataError
from laden.hookspecs import hookimpl
from laden.records import ChunkMeasure  # re-exported: it used to live here
from laden.registry import Registry
from laden.validators import at_least, one_of, optional, positive

__all__ = ["ChunkMeasure", "JsonlSource"]

#: A file is measured in about this many byte ranges at least (see ``chunks``).
MIN_CHUNKS = 64
#: ... each of at least this many bytes (unless ``chunk_bytes`` is smaller).
MIN_CHUNK_BYTES = 64 << 10

#: Without a declared ``vocab_size``, token ids must fit the collated dtype, int32.
INT32_LIMIT = 1 << 31

#: Leading bytes of compressed files, with the command that undoes each.
_MAGIC = {
    b"\x1f\x8b": ("gzip", "gunzip -k"),
    b"\x28\xb5\x2f\xfd": ("zstd", "zstd -d"),
    b"BZh": ("bzip2", "bunzip2 -k"),
    b"\xfd7zXZ\x00": ("xz", "unxz -k"),
}
_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bzip2", ".xz": "xz"}


def _compressed(path: str) -> tuple[str, str] | None:
    """``(format, command)`` when ``path`` is a compressed file, by magic bytes or name."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None  # reading it will say why
    for magic, found in _MAGIC.items():
        if head.startswith(magic):
            return found
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _SUFFIXES and head.lstrip()[:1] not in (b"{", b""):
        fmt = _SUFFIXES[suffix]
        return next(v for v in _MAGIC.values() if v[0] == fmt)
    return None


def _zeros_and_ones(values: list[Any]) -> bool:
    try:
        return set(values) <= {0, 1}
    except TypeError:  # a nested list or object: unhashable
        return False


def _json_kind(value: Any) -> str:
    kinds = {
        bool: "a boolean",
        float: "a float",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    return kinds.get(type(value), "null" if value is None else type(value).__name__)


@attrs.frozen(kw_only=True)
class JsonlSource:
    """JSON lines with ``text`` or ``input_ids``; optional ``id``, ``key``, ``loss_mask``.

    Each row's byte offset is recorded, so rows can be read back at random,
    which is why the file must be uncompressed (a ``.jsonl.gz`` or
    ``.jsonl.zst`` is a DataError saying how to decompress it).

    Pre-tokenized ``input_ids`` must be a list of integers, each ``>= 0`` and
    ``< vocab_size`` when it is declared, else ``< 2**31`` (what the collated
    int32 columns hold); a ``loss_mask`` must have one 0 or 1 per token. A row
    that breaks a rule is a malformed line (see ``on_error``).

    :param path: the ``.jsonl`` file.
    :param text_field: field holding the text to tokenize.
    :param ids_field: field holding pre-tokenized ids (used instead of the text when present).
    :param id_field: optional sample id (string or integer).
    :param key_field: optional integer bucket key.
    :param loss_mask_field: optional 0/1 list, one per token.
    :param vocab_size: the vocabulary of pre-tokenized ids, when known (ids must
        be below it); default: ids must fit int32.
    :param on_error: ``error`` stops at the first malformed line (naming file and
        line); ``skip`` leaves it out and counts it.
    :param chunk_bytes: the largest byte range one worker measures at a time.
    """

    name: ClassVar[str] = "jsonl"

    path: str
    text_field: str = "text"
    ids_field: str = "input_ids"
    id_field: str = "id"
    key_field: str = "key"
    loss_mask_field: str = "loss_mask"
    vocab_size: int | None = attrs.field(default=None, validator=optional(positive))
    on_error: str = attrs.field(default="error", validator=one_of("error", "skip"))
    chunk_bytes: int = attrs.field(
        default=16 << 20, validator=at_least(1), metadata={"identity": False}
    )

    # ---------------------------------------------------------------- rows

    def _columns(self) -> dict[str, str]:
        """laden's field name -> this file's."""
        return {
            "text": self.text_field,
            "input_ids": self.ids_field,
            "id": self.id_field,
            "key": self.key_field,
            "loss_mask": self.loss_mask_field,
        }

    def field_name(self, column: str) -> str:
        """What the file calls laden's field ``column`` (``id`` -> ``id_field``)."""
        return self._columns().get(column, column)

    def sample(self, row: dict[str, Any]) -> dict[str, Any]:
        """A parsed row in laden's field names (the row itself when none is renamed)."""
        renamed = {theirs: ours for ours, theirs in self._columns().items() if theirs != ours}
        if not renamed:
            return row
        # A field of laden's name that the file does not use for it is left out,
        # so ``input_ids`` always means the ids the settings point at.
        dropped = set(renamed) | set(renamed.values())
        out = {k: v for k, v in row.items() if k not in dropped}
        out.update({ours: row[theirs] for theirs, ours in renamed.items() if theirs in row})
        return out

    def parse(self, raw: bytes, line: int | None = None) -> dict[str, Any]:
        """One line as a row; raises DataError naming file and (1-based) line."""
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"invalid JSON: {exc}", file=self.path, line=line) from None
        if not isinstance(row, dict):
            raise DataError(
                f"expected a JSON object, got {type(row).__name__}", file=self.path, line=line
            )
        ids = row.get(self.ids_field)
        if ids is not None:
            problem = self._check_ids(ids)
            if problem:
                raise DataError(problem, file=self.path, line=line)
        elif not isinstance(row.get(self.text_field), str):
            raise DataError(
                f"row has neither {self.text_field!r} (a string) nor {self.ids_field!r}",
                file=self.path,
                line=line,
            )
        key = row.get(self.key_field)
        if key is not None and (not isinstance(key, int) or isinstance(key, bool) or key < 0):
            raise DataError(
                f"{self.key_field!r} must be a non-negative integer", file=self.path, line=line
            )
        sample_id = row.get(self.id_field)
        if sample_id is not None and (
            isinstance(sample_id, bool) or not isinstance(sample_id, (str, int))
        ):
            raise DataError(
                f"{self.id_field!r} must be a string or an integer", file=self.path, line=line
            )
        mask = row.get(self.loss_mask_field)
        if mask is not None:
            if not isinstance(mask, list) or not _zeros_and_ones(mask):
                raise DataError(
                    f"{self.loss_mask_field!r} must be a list of 0 and 1", file=self.path, line=line
                )
            if ids is not None and len(mask) != len(ids):
                raise DataError(
                    f"{self.loss_mask_field!r} has {len(mask)} values but {self.ids_field!r} "
                    f"has {len(ids)} tokens",
                    file=self.path,
                    line=line,
                )
        return row

    def _check_ids(self, ids: Any) -> str | None:
        """Why ``ids`` is no valid list of token ids, or None.

        The common case costs three C-level passes (types, min, max) over the
        list JSON already built; finding the culprit runs only on failure.
        """
        field = self.ids_field
        if not isinstance(ids, list):
            return f"{field!r} must be a list of integers, got {_json_kind(ids)}"
        if not ids:
            return None
        if set(map(type, ids)) != {int}:  # exact: bool is a subclass of int
            at, bad = next((k, v) for k, v in enumerate(ids) if type(v) is not int)
            return (
                f"{field!r} must be a list of integers, got {json.dumps(bad)} "
                f"({_json_kind(bad)}) at position {at}"
            )
        low = min(ids)
        if low < 0:
            return f"{field!r} holds a negative token id, {low} at position {ids.index(low)}"
        high = max(ids)
        limit = self.vocab_size if self.vocab_size is not None else INT32_LIMIT
        if high >= limit:
            where = f"{high} at position {ids.index(high)}"
            if self.vocab_size is not None:
                return f"{field!r} holds token id {where}, not below vocab_size {limit}"
            return (
                f"{field!r} holds token id {where}, which does not fit int32 (the collated "
                "dtype); declare the vocabulary with the source setting vocab_size"
            )
        return None

    def _check_plain(self) -> None:
        """A compressed file is a DataError: rows are read back by byte offset."""
        found = _compressed(self.path)
        if found is not None:
            fmt, command = found
            raise DataError(
                f"{fmt}-compressed input is not supported: rows are read back at random by "
                f"byte offset, which needs the plain file; decompress it first "
                f"(e.g. {command} {self.path}) and give the .jsonl",
                file=self.path,
            )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every valid row in file order, as a sample (bad lines per ``on_error``)."""
        self._check_plain()
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = self.parse(raw, number)
                except DataError:
                    if self.on_error == "error":
                        raise
                    continue
                yield self.sample(row)

    def read_at(self, offsets: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The samples starting at these byte offsets (from a length table's ``offset``)."""
        out = []
        with open(self.path, "rb") as f:
            for offset in np.asarray(offsets, dtype=np.int64).tolist():
                f.seek(offset)
                out.append(self.sample(self.parse(f.readline())))
        return out

    def fingerprint(self, *, progress: Callable[[int], object] | None = None) -> str:
        """The digest of the file's bytes (``progress(n)`` after every ``n`` bytes hashed)."""
        return file_digest(self.path, progress=progress)

    # ------------------------------------------------------------ measuring

    def chunks(self) -> list[tuple[int, int]]:
        """Byte ranges that start at line starts, of at most ``chunk_bytes`` each.

        A smaller file is still cut into about :data:`MIN_CHUNKS` ranges (of at
        least :data:`MIN_CHUNK_BYTES`, unless ``chunk_bytes`` is smaller), so
        its measuring shows progress and spreads over workers. The ranges
        depend only on the file and ``chunk_bytes``, so a rerun finds the same.
        """
        self._check_plain()
        size = os.path.getsize(self.path)
        step = min(self.chunk_bytes, max(MIN_CHUNK_BYTES, -(-size // MIN_CHUNKS)))
        bounds = [0]
        with open(self.path, "rb") as f:
            while bounds[-1] < size:
                target = bounds[-1] + step
                if target >= size:
                    bounds.append(size)
                    break
                f.seek(target - 1)
                f.readline()  # move to the start of the next line
                bounds.append(min(f.tell(), size))
        return list(itertools.pairwise(bounds))

    def measure(self, start: int, end: int, tokenizer: Any) -> ChunkMeasure:
        """Measure the rows in ``[start, end)`` with ``tokenizer`` (runs in a worker)."""
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        texts: list[str] = []
        text_rows: list[int] = []
        lengths: list[int] = []
        offsets: list[int] = []
        lines: list[int] = []
        keys: list[int] = []
        ids: list[Any] = []
        has_id: list[bool] = []
        mask_rows: list[int] = []  # kept rows with a loss mask, and its length
        mask_lengths: list[int] = []
        errors: list[tuple[int, str]] = []
        blank = 0
        pos = 0
        number = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            stop = n if nl < 0 else nl + 1
            raw = data[pos:stop]
            if not raw.strip():
                blank += 1
            else:
                try:
                    row = self.parse(raw)
                except DataError as exc:
                    errors.append((number, exc.reason))
                else:
                    ids_value = row.get(self.ids_field)
                    if ids_value is None:
                        text_rows.append(len(lengths))
                        texts.append(row[self.text_field])
                    lengths.append(len(ids_value) if ids_value is not None else 0)
                    offsets.append(start + pos)
                    lines.append(number)
                    keys.append(row.get(self.key_field, -1))
                    sample_id = row.get(self.id_field)
                    has_id.append(sample_id is not None)
                    ids.append(sample_id)
                    mask = row.get(self.loss_mask_field)
                    if mask is not None:
                        mask_rows.append(len(lengths) - 1)
                        mask_lengths.append(len(mask))
            number += 1
            pos = stop
        length = np.asarray(lengths, dtype=np.int64)
        if texts:
            length[np.asarray(text_rows, dtype=np.int64)] = tokenizer.count(texts)
        offset = np.asarray(offsets, dtype=np.int64)
        line = np.asarray(lines, dtype=np.int64)
        key_array = np.asarray(keys, dtype=np.int64)
        has_id_array = np.asarray(has_id, dtype=bool)
        # A text row's mask must have as many values as the tokenizer made tokens
        # (pre-tokenized rows were checked by parse).
        rows = np.asarray(mask_rows, dtype=np.int64)
        have = np.asarray(mask_lengths, dtype=np.int64)
        wrong = have != length[rows]
        if wrong.any():
            for r, got in zip(rows[wrong].tolist(), have[wrong].tolist(), strict=True):
                reason = (
                    f"{self.loss_mask_field!r} has {got} values but the text is "
                    f"{int(length[r])} tokens"
                )
                errors.append((lines[r], reason))
            errors.sort()
            keep = np.ones(length.size, dtype=bool)
            keep[rows[wrong]] = False
            length, offset, line = length[keep], offset[keep], line[keep]
            key_array, has_id_array = key_array[keep], has_id_array[keep]
            ids = [v for v, k in zip(ids, keep.tolist(), strict=True) if k]
        return ChunkMeasure(
            start=start,
            lines=number,
            length=length,
            offset=offset,
            line=line,
            key=key_array if (key_array >= 0).any() else None,
            ids=ids if has_id_array.any() else None,
            has_id=has_id_array,
            errors=errors,
            blank=blank,
        )


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(JsonlSource)
