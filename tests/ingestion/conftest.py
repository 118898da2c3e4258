"""Fixtures for the ingestion tests: the real default embedder, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


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
