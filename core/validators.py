"""attrs validators for strategy configs.

They raise :class:`~laden.errors.ConfigError` carrying the field name, so the
kernel can report the full key path (``sampler.token_budget: must be > 0, got -5``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from laden.errors import ConfigError

__all__ = ["at_least", "greater_than", "increasing", "one_of", "optional", "positive"]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def greater_than(bound: float) -> Validator:
    """The value must be strictly greater than ``bound``."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value > bound:
            raise ConfigError(f"must be > {bound}, got {value!r}", path=(attribute.name,))

    return check


def at_least(bound: float) -> Validator:
    """The value must be greater than or equal to ``bound``."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value >= bound:
            raise ConfigError(f"must be >= {bound}, got {value!r}", path=(attribute.name,))

    return check


positive = greater_than(0)


def one_of(*choices: object) -> Validator:
    """The value must be one of ``choices``."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"must be one of {listed}, got {value!r}", path=(attribute.name,))

    return check


def increasing(*, minimum: float | None = None) -> Validator:
    """A sequence of numbers that strictly increases (bucket edges, say)."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Sequence[float]) -> None:
        for i, v in enumerate(value):
            if minimum is not None and v < minimum:
                raise ConfigError(f"must be >= {minimum}, got {v!r}", path=(attribute.name, i))
            if i and v <= value[i - 1]:
                raise ConfigError(
                    f"must increase strictly, got {value[i - 1]!r} then {v!r}",
                    path=(attribute.name, i),
                )

    return check


def optional(validator: Validator) -> Validator:
    """Apply ``validator`` unless the value is None."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            validator(instance, attribute, value)

    return check
