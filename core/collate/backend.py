"""The base class of collating backends, and host arrays in the dtypes a backend hands over."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.batching import smallest_int
from laden.collate.layout import BatchLayout
from laden.collate.tokens import IGNORE_INDEX, check_fits, collate
from laden.errors import ConfigError
from laden.records import Ragged
from laden.validators import one_of, optional, positive

__all__ = ["FIXED_DTYPES", "CollatingBackend", "host_dtypes"]


@attrs.frozen(kw_only=True)
class CollatingBackend:
    """What the built-in backends share: collation settings, then ``convert``.

    Subclasses give ``name``, ``convert(arrays)`` (host arrays -> framework
    arrays) and ``as_numpy(value)`` (back, for the conformance check).

    :param pad_id: the token id of padding.
    :param ignore_index: the label of positions that are no target.
    :param shift_labels: labels already shifted to the next token (see
        :func:`laden.collate.collate`).
    :param pad_to_multiple_of: round the row length up to a multiple of this
        (8 or 64 suits tensor cores).
    :param dense_mask: ``block`` or ``causal`` adds the dense ``attn_mask``;
        ``none`` (default) leaves it out, as it costs O(L²) per row.
    :param int_dtype: the dtype of the token columns (``input_ids``, ``labels``,
        ``position_ids``, ``segment_ids``, ``attention_mask``): ``auto``
        (default) picks the narrowest that holds the vocabulary, ``pad_id`` and
        ``ignore_index``, which is int32 for every real tokenizer; ``int32`` or
        ``int64`` force one. ``cu_seqlens`` is int32 (flash-attention's contract)
        and ``sample_ids`` int64 whatever this says; with ``auto`` a backend may
        keep columns its framework needs wide (``torch``: ``labels``). A token
        id that does not fit is a DataError naming the setting to widen.
    :param vocab_size: the vocabulary size, when known; with ``auto``, a
        vocabulary beyond int32 makes the token columns int64.
    """

    name: ClassVar[str] = ""
    #: Integer columns kept int64 under ``int_dtype = "auto"`` because this
    #: framework's consumers need them so (e.g. PyTorch losses take int64 targets).
    wide_columns: ClassVar[tuple[str, ...]] = ()

    pad_id: int = 0
    ignore_index: int = IGNORE_INDEX
    shift_labels: bool = False
    pad_to_multiple_of: int | None = attrs.field(default=None, validator=optional(positive))
    dense_mask: str = attrs.field(default="none", validator=one_of("none", "block", "causal"))
    int_dtype: str = attrs.field(default="auto", validator=one_of("auto", "int32", "int64"))
    vocab_size: int | None = attrs.field(default=None, validator=optional(positive))

    def __attrs_post_init__(self) -> None:
        if self.int_dtype == "int32":
            for name in ("pad_id", "ignore_index"):
                value = getattr(self, name)
                if smallest_int(value) != np.int32:
                    raise ConfigError(
                        f"{value} does not fit int_dtype 'int32'; use int_dtype 'int64'",
                        path=(name,),
                    )

    @property
    def token_dtype(self) -> np.dtype[Any]:
        """The dtype of the token columns: ``int_dtype``, with ``auto`` resolved."""
        if self.int_dtype != "auto":
            return np.dtype(self.int_dtype)
        top = self.vocab_size - 1 if self.vocab_size is not None else 0
        return smallest_int(top, self.pad_id, self.ignore_index)

    @property
    def wide(self) -> tuple[str, ...]:
        """The columns this backend hands over as int64 although ``token_dtype`` is narrower."""
        return self.wide_columns if self.int_dtype == "auto" else ()

    def host(
        self, layout: BatchLayout, tokens: Any, *, loss_mask: Ragged | None = None
    ) -> dict[str, Any]:
        """Collated host (numpy) arrays in this backend's dtypes."""
        arrays = collate(
            layout,
            tokens,
            loss_mask=loss_mask,
            pad_id=self.pad_id,
            ignore_index=self.ignore_index,
            shift_labels=self.shift_labels,
            pad_to_multiple_of=self.pad_to_multiple_of,
            dense_mask=None if self.dense_mask == "none" else self.dense_mask,
            dtype=self.token_dtype,
        )
        return host_dtypes(arrays, self.token_dtype, wide=self.wide)

    def collate(
        self, layout: BatchLayout, tokens: Any, *, loss_mask: Ragged | None = None
    ) -> Mapping[str, Any]:
        """Collate one batch and convert it to this backend's arrays."""
        return self.convert(self.host(layout, tokens, loss_mask=loss_mask))

    def convert(self, arrays: Mapping[str, Any]) -> Mapping[str, Any]:
        raise NotImplementedError

    def as_numpy(self, value: Any) -> Any:
        raise NotImplementedError


#: Columns whose dtype is fixed by the consumer's contract, whatever ``int_dtype`` says:
#: flash-attention's varlen kernels take int32 cumulative sequence lengths, and
#: sample ids index datasets that may hold more than 2**31 samples.
FIXED_DTYPES: Mapping[str, np.dtype[Any]] = {
    "cu_seqlens": np.dtype(np.int32),
    "sample_ids": np.dtype(np.int64),
}


def host_dtypes(
    arrays: Mapping[str, Any], int_dtype: Any, *, wide: Sequence[str] = ()
) -> dict[str, Any]:
    """C-contiguous numpy arrays, integer columns in ``int_dtype``; plain ints pass through.

    Columns in ``wide`` become int64 and those in :data:`FIXED_DTYPES` keep
    their fixed dtype. Narrowing checks the values: one that does not fit is a
    DataError, never a silent wrap-around.
    """
    target = np.dtype(int_dtype)
    out: dict[str, Any] = {}
    for key, value in arrays.items():
        if isinstance(value, int | np.integer):
            out[key] = int(value)
            continue
        array = np.asarray(value)
        want = None
        if key in FIXED_DTYPES:
            want = FIXED_DTYPES[key]
        elif array.dtype.kind in "iu":
            want = np.dtype(np.int64) if key in wide else target
        if want is not None and array.dtype != want:
            if array.size and not np.can_cast(array.dtype, want):
                check_fits(key, array, want)
            array = array.astype(want)
        out[key] = np.ascontiguousarray(array)
    return out
