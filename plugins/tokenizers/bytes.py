"""``bytes``: one token per UTF-8 byte. Zero dependencies, exact and fast."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs
import numpy as np

from laden.digest import canonical_json, digest
from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.serde import config_of
from laden.validators import one_of


@attrs.frozen(kw_only=True)
class BytesTokenizer:
    """Token ids are the UTF-8 bytes of the text (vocabulary of 256).

    :param errors: how to encode lone surrogates: ``strict`` or ``surrogatepass``.
    """

    name: ClassVar[str] = "bytes"
    vocab_size: ClassVar[int] = 256

    errors: str = attrs.field(default="surrogatepass", validator=one_of("strict", "surrogatepass"))

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", self.errors), dtype=np.uint8).astype(np.int32)

    def count(self, texts: Sequence[str]) -> np.ndarray:
        errors = self.errors
        return np.fromiter(
            (len(t.encode("utf-8", errors)) for t in texts), dtype=np.int64, count=len(texts)
        )

    def fingerprint(self) -> str:
        return digest(canonical_json(config_of(self)))


@hookimpl
def laden_register_tokenizers(registry: Registry) -> None:
    registry.add(BytesTokenizer)
