"""Which embedding model made a set of vectors: a value both halves of kb share.

Kept apart from ingestion.embeddings (which loads models) so that kb.models can name the
model a collection's vectors came from without importing anything that loads one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EmbedSpec:
    """Which model made a collection's vectors, as an identity that loads the same model again.

    Stored on each collection (Collection.embed_model), so a change of settings never
    silently pairs a question embedded by one model with vectors made by another.
    """

    model: str = ""  # a folder or a cached model name; "" is the bundled all-MiniLM-L6-v2
    url: str = ""  # a Text Embeddings Inference server, or "" to run the model in this process
    dim: int = 384

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> EmbedSpec:
        data = data or {}
        return cls(model=data.get("model") or "", url=data.get("url") or "", dim=int(data.get("dim") or 384))

    def __str__(self) -> str:
        name = self.model or "all-MiniLM-L6-v2 (bundled)"
        return f"{name} via {self.url}, {self.dim} dims" if self.url else f"{name}, {self.dim} dims"


def configured_spec() -> EmbedSpec:
    """The model the settings name (KB_EMBED_MODEL, _URL, _DIM): new collections and re-indexing use it."""
    from django.conf import settings

    return EmbedSpec(model=settings.KB_EMBED_MODEL, url=settings.KB_EMBED_URL, dim=settings.KB_EMBED_DIM)
