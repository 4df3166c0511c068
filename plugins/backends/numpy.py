"""``numpy``: batches as host numpy arrays (the reference every backend matches)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.validators import one_of

#: Columns whose dtype is fixed by the consumer's contract, whatever ``int_dtype`` says:
#: flash-attention's varlen kernels take int32 cumulative sequence lengths.
FIXED_DTYPES: Mapping[str, np.dtype[Any]] = {"cu_seqlens": np.dtype(np.int32)}


@attrs.frozen(kw_only=True)
class NumpyBackend:
    """Returns C-contiguous numpy arrays; integer columns in ``int_dtype``.

    :param int_dtype: ``int64`` (what PyTorch's embedding and loss expect) or ``int32``.
    """

    name: ClassVar[str] = "numpy"

    int_dtype: str = attrs.field(default="int64", validator=one_of("int64", "int32"))

    def convert(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for key, value in arrays.items():
            array = np.asarray(value)
            if key in FIXED_DTYPES:
                array = array.astype(FIXED_DTYPES[key], copy=False)
            elif array.dtype.kind in "iu":
                array = array.astype(self.int_dtype, copy=False)
            out[key] = np.ascontiguousarray(array)
        return out


@hookimpl
def laden_register_backends(registry: Registry) -> None:
    registry.add(NumpyBackend)
