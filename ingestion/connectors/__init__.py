"""Connectors to the places documents live; `open_connector` picks one by kind."""

from __future__ import annotations

from ingestion.connectors.base import Connector, Limits, Listing, Page, SourceConfig, SourceError, selected

__all__ = [
    "KINDS",
    "Connector",
    "Limits",
    "Listing",
    "Page",
    "SourceConfig",
    "SourceError",
    "open_connector",
    "selected",
]

KINDS = ("git", "folder", "web", "confluence", "mediawiki")


def open_connector(config: SourceConfig) -> Connector:
    """The connector for the config's kind; SourceError when its location is refused."""
    # Imported on use: each kind brings its own client library (atlassian-python-api alone
    # takes most of a second), and a deployment mostly syncs one or two kinds.
    if config.kind == "git":
        from ingestion.connectors.git import GitConnector as cls
    elif config.kind == "folder":
        from ingestion.connectors.folder import FolderConnector as cls
    elif config.kind == "web":
        from ingestion.connectors.web import WebConnector as cls
    elif config.kind == "confluence":
        from ingestion.connectors.confluence import ConfluenceConnector as cls
    elif config.kind == "mediawiki":
        from ingestion.connectors.mediawiki import MediaWikiConnector as cls
    else:
        raise SourceError(f"Unknown source kind {config.kind!r}; kb knows {', '.join(KINDS)}.")
    return cls(config)
