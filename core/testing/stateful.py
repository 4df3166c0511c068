"""``check_stateful``: the conformance check of anything resumable (``Stateful``).

Resumable means: stop after ``k`` items, save ``state_dict()``, load it into a
fresh object built the same way, and the fresh object continues with exactly
the items the first one would have produced next; a state that is not its own
(another plan's fingerprint, another kind, not a mapping) is refused with a
:class:`~laden.errors.DataError`, never loaded halfway.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from laden.errors import DataError
from laden.stateful import Stateful

__all__ = ["check_stateful", "plain"]


def plain(value: Any) -> Any:
    """``value`` as plain Python data, to compare items that hold arrays or tensors.

    Mappings, sequences and attrs records recurse; arrays and tensors become
    lists (through ``tolist``).
    """
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if attrs.has(type(value)):
        return {
            field.name: plain(getattr(value, field.name)) for field in attrs.fields(type(value))
        }
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return value


def _take(obj: Any, count: int | None) -> list[Any]:
    """The next ``count`` items of one pass over ``obj`` (all when None), the pass closed."""
    iterator = iter(obj)
    try:
        return list(itertools.islice(iterator, count))
    finally:
        close = getattr(iterator, "close", None)
        if callable(close):
            close()


def check_stateful(
    factory: Callable[[], Any],
    *,
    cuts: Sequence[int] = (0, 1, 3),
    tail: int | None = None,
    key: Callable[[Any], Any] = plain,
    json_state: bool = True,
    foreign: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
) -> None:
    """Check that the objects ``factory()`` builds resume exactly from their state.

    For every ``k`` in ``cuts``: one object yields ``k`` items, its state is
    taken (round-tripped through JSON when ``json_state``), the object goes
    on; a fresh object loads the state and must yield the same continuation
    (``tail`` items of it, or all), and report the same state. Then a state
    of another plan (``fingerprint`` replaced), of another kind, and one that
    is not a mapping must each raise a DataError.

    :param factory: builds a fresh object, the same way every call.
    :param cuts: where to stop and save (items taken first).
    :param tail: compare this many items after the cut (None: to the end;
        set it for an endless object).
    :param key: makes an item comparable (default :func:`plain`).
    :param json_state: the state must survive ``json.dumps``/``json.loads``.
    :param foreign: turns a valid state into one that must be refused
        (besides the fingerprint, kind and type changes checked always).
    """
    probe = factory()
    assert isinstance(probe, Stateful), f"{type(probe).__name__} is not Stateful"
    first = probe.state_dict()
    assert isinstance(first, dict), "state_dict() must return a dict"
    assert plain(probe.state_dict()) == plain(first), "state_dict() changed the state"
    for cut in cuts:
        ran = factory()
        iterator = iter(ran)
        head = [key(item) for item in itertools.islice(iterator, cut)]
        assert len(head) == cut, f"only {len(head)} items, cannot stop after {cut}"
        state = ran.state_dict()
        if json_state:
            state = json.loads(json.dumps(state))
        expected = [key(item) for item in itertools.islice(iterator, tail)]
        close = getattr(iterator, "close", None)
        if callable(close):
            close()
        resumed = factory()
        resumed.load_state_dict(state)
        again = resumed.state_dict()
        if json_state:
            again = json.loads(json.dumps(again))
        assert plain(again) == plain(state), (
            f"after {cut} items: a loaded state reads back differently"
        )
        got = [key(item) for item in _take(resumed, tail)]
        assert got == expected, (
            f"after {cut} items: resumed from the state, {len(got)} items differ from the "
            f"{len(expected)} an uninterrupted run gives"
        )
    _check_refusals(factory, first, foreign)


def _check_refusals(
    factory: Callable[[], Any],
    state: dict[str, Any],
    foreign: Callable[[dict[str, Any]], Mapping[str, Any]] | None,
) -> None:
    """Every kind of state that is not the object's own raises a DataError."""
    bad: list[tuple[str, Any]] = [("a list", [state]), ("None", None)]
    if "fingerprint" in state:
        bad.append(("another plan's", {**state, "fingerprint": "0" * 32}))
    if "kind" in state:
        bad.append(("another kind's", {**state, "kind": "laden.not_this"}))
    if foreign is not None:
        bad.append(("a foreign", foreign(dict(state))))
    for what, wrong in bad:
        target = factory()
        try:
            target.load_state_dict(wrong)
        except DataError:
            continue
        raise AssertionError(f"{type(target).__name__} loaded {what} state without a DataError")
