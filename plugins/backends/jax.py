"""``jax``: batches as ``jax.Array`` on JAX's default device (extra ``jax``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.collate import CollatingBackend, host_dtypes
from laden.hookspecs import hookimpl
from laden.registry import Registry


@attrs.frozen(kw_only=True)
class JaxBackend(CollatingBackend):
    """``jax.device_put`` of each host column onto the default device (or ``device``).

    JAX without ``jax_enable_x64`` has no 64-bit arrays: with ``int_dtype =
    "auto"`` the token columns are int32 as on numpy, and a column that must be
    int64 (``sample_ids``) stays a host numpy array rather than being narrowed.
    Settings are those of :class:`laden.collate.CollatingBackend`.

    :param device: a device string such as ``cpu`` or ``gpu:0`` (None: JAX's default).
    """

    name: ClassVar[str] = "jax"
    requires: ClassVar[tuple[str, ...]] = ("jax",)
    extra: ClassVar[str] = "jax"

    device: str | None = None

    def _device(self) -> Any:
        import jax

        if self.device is None:
            return None
        platform, _, index = self.device.partition(":")
        return jax.devices(platform)[int(index or 0)]

    def convert(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        import jax

        device = self._device()
        wide = bool(getattr(jax.config, "jax_enable_x64", False))
        out: dict[str, Any] = {}
        for key, value in host_dtypes(arrays, self.token_dtype, wide=self.wide).items():
            if isinstance(value, int) or (value.dtype.itemsize == 8 and not wide):
                out[key] = value  # a plain int, or 64-bit data JAX would narrow
            else:
                out[key] = jax.device_put(value, device)
        return out

    def as_numpy(self, value: Any) -> Any:
        return value if isinstance(value, int) else np.asarray(value)


@hookimpl
def laden_register_backends(registry: Registry) -> None:
    registry.add(JaxBackend)
