"""``pt``: one batch per ``torch.save`` file of tensors (extra ``torch``)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.kinds import BATCH_META
from laden.registry import Registry


@attrs.frozen(kw_only=True)
class PtWriter:
    """A dict of tensors (one per column) plus ``epoch``, ``step``, ``rank`` and
    ``padding`` as plain Python values. Read back only with
    ``torch.load(path, weights_only=True)``, which refuses anything but tensors
    and primitive values.
    """

    name: ClassVar[str] = "pt"
    suffix: ClassVar[str] = ".pt"
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    extra: ClassVar[str] = "torch"

    def write(
        self, file: BinaryIO, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        import torch

        payload: dict[str, Any] = {
            key: torch.from_numpy(np.asarray(value, order="C")) for key, value in arrays.items()
        }
        for key in BATCH_META:
            if key in meta:
                payload[key] = meta[key]
        torch.save(payload, file)

    def read(self, path: str) -> dict[str, np.ndarray]:
        import torch

        return self._arrays(torch.load(path, weights_only=True, map_location="cpu"))

    def read_bytes(self, buffer: np.ndarray, name: str) -> dict[str, np.ndarray]:
        """The columns of a file already in memory (``buffer``: its bytes, uint8)."""
        import torch

        data = torch.load(
            io.BytesIO(memoryview(buffer)),  # type: ignore[arg-type]
            weights_only=True,
            map_location="cpu",
        )
        return self._arrays(data)

    @staticmethod
    def _arrays(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
        import torch

        return {
            key: value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            for key, value in data.items()
        }


@hookimpl
def laden_register_writers(registry: Registry) -> None:
    registry.add(PtWriter)
