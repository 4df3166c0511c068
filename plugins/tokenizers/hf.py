"""``hf``: a Hugging Face ``tokenizers`` tokenizer loaded from a local ``tokenizer.json``."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.digest import canonical_json, digest, file_digest
from laden.errors import ConfigError
from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.serde import config_of
from laden.validators import at_least


@functools.lru_cache(maxsize=8)
def _load(path: str, digest_: str) -> Any:
    # Keyed by the file digest too: a rewritten file is loaded afresh.
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(path)
    except Exception as exc:
        raise ConfigError(f"cannot load tokenizer file {path!r}: {exc}", path=("path",)) from exc


@functools.lru_cache(maxsize=32)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too: hashing the file once per encode call cost ~1 ms
    # a sample; a rewritten file gets a new key and is hashed afresh.
    return file_digest(path)


@attrs.frozen(kw_only=True)
class HFTokenizer:
    """A ``tokenizers.Tokenizer`` from a local file (never downloaded).

    Its fingerprint covers the name, the config and the vocabulary file's digest,
    so a changed ``tokenizer.json`` invalidates length caches built with it.

    :param path: a ``tokenizer.json`` on disk.
    :param add_special_tokens: count the special tokens the post-processor adds.
    :param batch_size: texts encoded per call (the Rust side runs them in parallel).
    """

    name: ClassVar[str] = "hf"
    requires: ClassVar[tuple[str, ...]] = ("tokenizers",)
    extra: ClassVar[str] = "hf"

    path: str
    add_special_tokens: bool = False
    batch_size: int = attrs.field(default=1024, validator=at_least(1))

    def _file_digest(self) -> str:
        try:
            stat = os.stat(self.path)
            return _digest_of(self.path, stat.st_size, stat.st_mtime_ns)
        except OSError as exc:
            raise ConfigError(f"cannot read tokenizer file: {exc}", path=("path",)) from exc

    @property
    def tokenizer(self) -> Any:
        return _load(self.path, self._file_digest())

    def encode(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids
        return np.asarray(ids, dtype=np.int32)

    def count(self, texts: Sequence[str]) -> np.ndarray:
        tokenizer = self.tokenizer
        out = np.zeros(len(texts), dtype=np.int64)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            encodings = tokenizer.encode_batch(batch, add_special_tokens=self.add_special_tokens)
            out[start : start + len(batch)] = [len(e.ids) for e in encodings]
        return out

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def fingerprint(self) -> str:
        settings = config_of(self)
        settings.pop("path")  # where the file lies does not change what it does
        settings.pop("batch_size")
        return digest(canonical_json(settings), self._file_digest())


@hookimpl
def laden_register_tokenizers(registry: Registry) -> None:
    registry.add(HFTokenizer)
