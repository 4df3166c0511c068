"""Shared fixtures: the real puzzle arcade server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.arcade_server import SKIP_REASON, ArcadeServer


@pytest.fixture(scope="module")
def arcade_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcadeServer]:
    """A running arcade server (its ``.port``), one per test module; skips without the extra."""
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    log = tmp_path_factory.mktemp("arcade") / "server.log"
    with ArcadeServer(log=log) as server:
        yield server
