"""``mlx``: batches as MLX arrays (extra ``mlx``; on Linux the CPU build)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.collate import CollatingBackend, host_dtypes
from laden.hookspecs import hookimpl
from laden.registry import Registry


@attrs.frozen(kw_only=True)
class MlxBackend(CollatingBackend):
    """``mx.array`` columns in MLX's unified memory (no device copy to make).

    The dense ``attn_mask`` is a boolean ``(rows, 1, L, L)`` array, as
    ``mx.fast.scaled_dot_product_attention`` takes it. Settings (``profile``
    included) are those of :class:`laden.collate.CollatingBackend`.
    """

    name: ClassVar[str] = "mlx"
    requires: ClassVar[tuple[str, ...]] = ("mlx",)
    extra: ClassVar[str] = "mlx"

    def convert(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        import mlx.core as mx

        out: dict[str, Any] = {}
        for key, value in host_dtypes(arrays, self.token_dtype, wide=self.wide).items():
            if isinstance(value, int):
                out[key] = value
                continue
            out[key] = mx.array(value)
            if self.mask_dtype == "bfloat16" and value.dtype.kind == "f":
                out[key] = out[key].astype(mx.bfloat16)  # the eager mask; numpy has no bfloat16
        return out

    def as_numpy(self, value: Any) -> Any:
        return value if isinstance(value, int) else np.array(value)


@hookimpl
def laden_register_backends(registry: Registry) -> None:
    registry.add(MlxBackend)
