"""``jsonl``: an offline dataset of JSON lines, readable at random by byte offset."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.errors import DataError
from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.validators import at_least, one_of

__all__ = ["ChunkMeasure", "JsonlSource"]


@attrs.frozen(kw_only=True, eq=False)
class ChunkMeasure:
    """What measuring one byte range of the file found (columns for its kept rows)."""

    start: int
    lines: int  # lines in the range, blank and bad ones included
    length: np.ndarray
    offset: np.ndarray
    line: np.ndarray  # 0-based line within the range, per kept row
    key: np.ndarray | None
    ids: list[Any] | None  # None when no row has an id
    has_id: np.ndarray
    errors: list[tuple[int, str]]  # (line within the range, reason)
    blank: int


@attrs.frozen(kw_only=True)
class JsonlSource:
    """JSON lines with ``text`` or ``input_ids``; optional ``id``, ``key``, ``loss_mask``.

    Each row's byte offset is recorded, so rows can be read back at random.

    :param path: the ``.jsonl`` file.
    :param text_field: field holding the text to tokenize.
    :param ids_field: field holding pre-tokenized ids (used instead of the text when present).
    :param id_field: optional sample id (string or integer).
    :param key_field: optional integer bucket key.
    :param loss_mask_field: optional 0/1 list, one per token.
    :param on_error: ``error`` stops at the first malformed line (naming file and
        line); ``skip`` leaves it out and counts it.
    :param chunk_bytes: the byte range one worker measures at a time.
    """

    name: ClassVar[str] = "jsonl"

    path: str
    text_field: str = "text"
    ids_field: str = "input_ids"
    id_field: str = "id"
    key_field: str = "key"
    loss_mask_field: str = "loss_mask"
    on_error: str = attrs.field(default="error", validator=one_of("error", "skip"))
    chunk_bytes: int = attrs.field(default=16 << 20, validator=at_least(1))

    # ---------------------------------------------------------------- rows

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
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids
            ):
                raise DataError(
                    f"{self.ids_field!r} must be a list of integers", file=self.path, line=line
                )
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
        if mask is not None and (not isinstance(mask, list) or any(m not in (0, 1) for m in mask)):
            raise DataError(
                f"{self.loss_mask_field!r} must be a list of 0 and 1", file=self.path, line=line
            )
        return row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every valid row in file order (bad lines per ``on_error``)."""
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    yield self.parse(raw, number)
                except DataError:
                    if self.on_error == "error":
                        raise

    def read_at(self, offsets: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The rows starting at these byte offsets (from a length table's ``offset``)."""
        out = []
        with open(self.path, "rb") as f:
            for offset in np.asarray(offsets, dtype=np.int64).tolist():
                f.seek(offset)
                out.append(self.parse(f.readline()))
        return out

    # ------------------------------------------------------------ measuring

    def chunks(self) -> list[tuple[int, int]]:
        """Byte ranges of about ``chunk_bytes`` that start at line starts."""
        size = os.path.getsize(self.path)
        bounds = [0]
        with open(self.path, "rb") as f:
            while bounds[-1] < size:
                target = bounds[-1] + self.chunk_bytes
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
            number += 1
            pos = stop
        length = np.asarray(lengths, dtype=np.int64)
        if texts:
            length[np.asarray(text_rows, dtype=np.int64)] = tokenizer.count(texts)
        key_array = np.asarray(keys, dtype=np.int64)
        return ChunkMeasure(
            start=start,
            lines=number,
            length=length,
            offset=np.asarray(offsets, dtype=np.int64),
            line=np.asarray(lines, dtype=np.int64),
            key=key_array if (key_array >= 0).any() else None,
            ids=ids if any(has_id) else None,
            has_id=np.asarray(has_id, dtype=bool),
            errors=errors,
            blank=blank,
        )


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(JsonlSource)
