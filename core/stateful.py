"""``Stateful``: the one word for resumable, and the one check of a state handed back.

Anything laden can stop and resume (the plan cursor, ``PlanLoader``,
``BatchReader``, the replay buffer, rolling windows) has ``state_dict()`` and
``load_state_dict(state)``, the shape of torchdata's ``Stateful``, so a
training loop saves them all the same way beside its checkpoint. A state is
plain data (JSON-serializable where it can be) and names what it is for:
``kind`` and, where there is one, the ``fingerprint`` of the plan it
belongs to. :func:`check_state` is how every ``load_state_dict`` refuses a
state that does not fit, with a :class:`~laden.errors.DataError` naming what.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from laden.errors import DataError

__all__ = ["Stateful", "check_state"]


@runtime_checkable
class Stateful(Protocol):
    """Something that can say where it stands and be put back there.

    ``load_state_dict(obj.state_dict())`` on a fresh object built the same way
    continues exactly where ``obj`` stood; a state of another object (another
    plan, another config) is refused with a DataError, never half loaded.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any], /) -> None: ...


def check_state(
    state: object,
    *,
    kind: str,
    fingerprint: str | None = None,
    fits: Mapping[str, Any] | None = None,
    within: Mapping[str, tuple[int, int]] | None = None,
    holds: str | None = None,
    where: str | None = None,
) -> Mapping[str, Any]:
    """Return ``state`` if it is a state of ``kind`` that fits; else raise a DataError.

    :param kind: what ``state["kind"]`` must be (``laden.plan.cursor``, ...).
    :param fingerprint: the plan fingerprint ``state["fingerprint"]`` must equal.
    :param fits: keys whose values must equal these (``rank``, ``world_size``, ...).
    :param within: integer keys and their inclusive bounds (``{"step": (0, 12)}``).
    :param holds: what this object holds, for the message when something does
        not fit (default: the expected values).
    :param where: the file the state came from, named in the error.
    """
    if not isinstance(state, Mapping):
        raise DataError(f"a {kind} state must be a mapping, got {type(state).__name__}", file=where)
    if state.get("kind") != kind:
        raise DataError(f"not a {kind} state (kind {state.get('kind')!r})", file=where)
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise DataError(
            f"the state belongs to plan {state.get('fingerprint')}, not {fingerprint}", file=where
        )
    fits, within = fits or {}, within or {}
    wrong = [key for key, value in fits.items() if state.get(key) != value]
    for key, (low, high) in within.items():
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            wrong.append(key)
    if wrong:
        theirs = ", ".join(f"{key} {state.get(key)!r}" for key in wrong)
        if holds is None:
            expected = [f"{k} {fits[k]!r}" for k in wrong if k in fits]
            expected += [f"{k} in {within[k][0]}..{within[k][1]}" for k in wrong if k in within]
            holds = f"this {kind} needs {', '.join(expected)}"
        raise DataError(f"the state ({theirs}) does not fit: {holds}", file=where)
    return state
