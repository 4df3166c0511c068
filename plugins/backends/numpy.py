"""``numpy``: batches as host numpy arrays (the reference every backend matches)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.collate import CollatingBackend, host_dtypes
from laden.hookspecs import hookimpl
from laden.registry import Registry


@attrs.frozen(kw_only=True)
class NumpyBackend(CollatingBackend):
    """Returns C-contiguous numpy arrays; token columns int32 unless ``int_dtype`` says otherwise.

    Settings are those of :class:`laden.collate.CollatingBackend`; with
    ``profile = "hf"``, ``eager`` and ``mask_dtype = "bfloat16"`` the additive
    mask is float32 holding bfloat16's lowest value (numpy has no bfloat16).
    """

    name: ClassVar[str] = "numpy"

    def convert(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        return host_dtypes(arrays, self.token_dtype, wide=self.wide)

    def as_numpy(self, value: Any) -> Any:
        return value if isinstance(value, int) else np.asarray(value)


@hookimpl
def laden_register_backends(registry: Registry) -> None:
    registry.add(NumpyBackend)
