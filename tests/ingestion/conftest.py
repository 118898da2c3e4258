"""Fixtures for the ingestion tests: the real default embedder (loaded once per session), and
for the connectors a loopback site and a guard against any other connection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3.util.connection

from tests.site_standin import Site


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    yield server
    server.close()


@pytest.fixture
def no_connect(monkeypatch):
    """Fail the test if any connection is attempted (the guard must refuse before that)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(urllib3.util.connection, "create_connection", refuse)


@pytest.fixture(scope="session")
def embedder():
    from ingestion.embeddings import get_embedder

    return get_embedder()


@pytest.fixture
def parse(tmp_path, embedder):
    """Write `content` to a file named `name` in tmp_path and parse it."""
    from ingestion.pipeline import parse_and_chunk

    def _parse(name: str, content: bytes | str | Path):
        if isinstance(content, Path):
            path = content
        else:
            path = tmp_path / name
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        return parse_and_chunk(path, source_path=f"uploads/{name}", embedder=embedder)

    return _parse
