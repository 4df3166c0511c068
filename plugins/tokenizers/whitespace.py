"""``whitespace``: one token per whitespace-separated word, ids by a stable hash."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import ClassVar

import attrs
import numpy as np

from laden.digest import canonical_json, digest
from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.serde import config_of
from laden.validators import greater_than


@attrs.frozen(kw_only=True)
class WhitespaceTokenizer:
    """Splits on runs of whitespace; a word's id is its CRC-32 modulo ``vocab_size``.

    Ids need no vocabulary file and are the same in every process and version.

    :param lowercase: fold case before hashing.
    :param vocab_size: the number of distinct ids.
    """

    name: ClassVar[str] = "whitespace"

    lowercase: bool = False
    vocab_size: int = attrs.field(default=1 << 20, validator=greater_than(1))

    def encode(self, text: str) -> np.ndarray:
        if self.lowercase:
            text = text.lower()
        words = text.split()
        ids = np.fromiter(
            (zlib.crc32(w.encode("utf-8", "surrogatepass")) for w in words),
            dtype=np.int64,
            count=len(words),
        )
        return (ids % self.vocab_size).astype(np.int32)

    def count(self, texts: Sequence[str]) -> np.ndarray:
        return np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))

    def fingerprint(self) -> str:
        return digest(canonical_json(config_of(self)))


@hookimpl
def laden_register_tokenizers(registry: Registry) -> None:
    registry.add(WhitespaceTokenizer)
