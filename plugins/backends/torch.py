"""``torch``: batches as PyTorch tensors on CPU or CUDA (extra ``torch``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.collate import CollatingBackend, host_dtypes
from laden.errors import ConfigError
from laden.hookspecs import hookimpl
from laden.registry import Registry

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def _device(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ConfigError(
            f"must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}", path=(attribute.name,)
        )


@attrs.frozen(kw_only=True)
class TorchBackend(CollatingBackend):
    """Tensors made without a copy on the host (``torch.from_numpy``), then moved.

    On CUDA the host tensors are pinned first so the copy to the GPU is
    asynchronous (``non_blocking``): the next batch can be collated while this
    one is in flight. The dense ``attn_mask`` is a boolean ``(rows, 1, L, L)``
    tensor that ``scaled_dot_product_attention`` takes as is (True = attend).
    With the default ``int_dtype = "auto"`` the token columns are int32 and
    ``labels`` int64 (what PyTorch's losses take; int64 whatever ``int_dtype``
    says). With ``profile = "hf"`` the batch is what a transformers model takes
    (see :mod:`laden.collate.hf`), the eager mask in ``mask_dtype``
    (``bfloat16`` included). Other settings are those of
    :class:`laden.collate.CollatingBackend`.

    :param device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    :param pin_memory: pin host tensors before a copy to CUDA.
    :param non_blocking: copy to the device asynchronously.
    """

    name: ClassVar[str] = "torch"
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    extra: ClassVar[str] = "torch"
    #: PyTorch's losses (``cross_entropy``, ``nll_loss``) and Hugging Face models
    #: take int64 targets, so with ``int_dtype = "auto"`` labels stay int64 while
    #: the other token columns are int32 (embeddings take either).
    wide_columns: ClassVar[tuple[str, ...]] = ("labels", "shift_labels")

    device: str = attrs.field(default="cpu", validator=_device)
    pin_memory: bool = True
    non_blocking: bool = True

    def convert(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        on_cuda = self.device.startswith("cuda")
        if on_cuda and not torch.cuda.is_available():
            raise ConfigError(
                f"backend.device is {self.device!r} but this torch has no CUDA device "
                f"(torch {torch.__version__})",
                path=("device",),
            )
        out: dict[str, Any] = {}
        for key, value in host_dtypes(arrays, self.token_dtype, wide=self.wide).items():
            if isinstance(value, int):
                out[key] = value
                continue
            tensor = torch.from_numpy(value)
            if self.mask_dtype == "bfloat16" and value.dtype.kind == "f":
                tensor = tensor.to(torch.bfloat16)  # the eager mask; numpy has no bfloat16
            if self.device != "cpu":
                if on_cuda and self.pin_memory:
                    tensor = tensor.pin_memory()
                tensor = tensor.to(self.device, non_blocking=self.non_blocking)
            out[key] = tensor
        return out

    def as_numpy(self, value: Any) -> Any:
        if isinstance(value, int):
            return value
        return np.asarray(value.detach().cpu().numpy())


@hookimpl
def laden_register_backends(registry: Registry) -> None:
    registry.add(TorchBackend)
