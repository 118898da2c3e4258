"""A folder on the server: every readable document under it, walked with content hashes.

The folder must lie inside one of the directories the administrator opened to kb
(KB_SOURCE_ROOTS, Limits.roots). Nothing is followed out of it: symlinked folders are not
entered at all, and a symlinked file counts only when its target lies inside the folder too.
Hidden files and folders (".git", ".DS_Store", editor droppings) are never pages.

A page's ref is the SHA-256 of its bytes, so touching a file without changing it does not
make kb read it again. Hashing means reading, though, so the cursor remembers each file's
size, times and hash: a file whose size and times are unchanged keeps its hash unread.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingestion.archives import PAGE_SUFFIXES
from ingestion.connectors.base import Listing, Page, SourceConfig, SourceError, selected

_CHUNK = 1 << 20
# Refs of files too large to fetch: no point hashing what fetch will refuse anyway.
_TOO_LARGE = "too-large"


def inside(path: str, folder: str) -> bool:
    """Whether the real path `path` is `folder` or lies under it (both already realpath'd)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def resolve_in_roots(location: str, roots: tuple[Path, ...], *, what: str = "The folder") -> str:
    """The real path of a server directory, refused unless it lies inside one of `roots`."""
    location = location.strip()
    if not roots:
        raise SourceError(
            f"{what} {location} cannot be read: kb may read no server folders until the administrator "
            "names some in KB_SOURCE_ROOTS."
        )
    if not os.path.isabs(location):
        raise SourceError(f"{what} must be an absolute path on the server, like /srv/docs; {location!r} is not.")
    # Both sides resolved: "/srv/docs/../../etc" and symlinked roots compare as what they are.
    real = os.path.realpath(location)
    if not any(inside(real, os.path.realpath(root)) for root in roots):
        raise SourceError(f"{location} is outside the folders kb may read (KB_SOURCE_ROOTS).")
    return real


def is_page_path(path: str) -> bool:
    """A path kb can read as a document, and not hidden (no part starting with ".")."""
    if any(part.startswith(".") for part in path.split("/")):
        return False
    return posixpath.splitext(path)[1].lower() in PAGE_SUFFIXES


def _sha256(path: str, limit: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if handle.tell() > limit:  # grew since the stat; fetch will refuse it
                break
    return digest.hexdigest()


def size_text(size: int) -> str:
    """A byte count as people read it."""
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size:,} bytes"


class FolderConnector:
    """Lists and reads the documents in one server directory."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.root = resolve_in_roots(config.location, config.limits.roots)

    def list_pages(self, *, known: Mapping[str, str], cursor: Mapping[str, Any]) -> Listing:
        if not os.path.isdir(self.root):
            raise SourceError(f"The folder {self.config.location} does not exist on the server (or is not a folder).")
        listing = Listing()
        found = self._walk(listing)
        paths = listing.within_budget(list(found), self.limits.max_pages)
        previous = cursor.get("files") if isinstance(cursor.get("files"), dict) else {}
        files: dict[str, list] = {}
        for path in paths:
            info = found[path]
            ref = self._ref(path, info, previous.get(path), listing)
            if ref is None:
                continue
            if not ref.startswith(_TOO_LARGE):
                files[path] = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, ref]
            listing.pages.append(Page(path=path, ref=ref, modified=datetime.fromtimestamp(info.st_mtime, tz=UTC)))
        listing.cursor = {"files": files}
        return listing

    def _walk(self, listing: Listing) -> dict[str, os.stat_result]:
        """Every selected, readable-looking document under the folder, by posix path."""
        found: dict[str, os.stat_result] = {}

        def unreadable(error: OSError) -> None:
            if error.filename == self.root:
                raise SourceError(f"kb cannot open the folder {self.config.location} ({error.strerror or error}).")
            # A folder kb cannot enter hides pages it may still have: the listing is partial.
            reason = error.strerror or str(error)
            listing.failures.append((self._relative(error.filename), f"kb cannot open this folder ({reason})."))
            listing.complete = False

        for top, dirs, names in os.walk(self.root, onerror=unreadable, followlinks=False):
            # Pruned in place so os.walk never enters them; symlinked folders are listed in
            # `dirs` but never entered with followlinks=False.
            dirs[:] = sorted(name for name in dirs if not name.startswith("."))
            for name in names:
                full = os.path.join(top, name)
                path = self._relative(full)
                if not is_page_path(path) or not selected(path, self.config.include, self.config.exclude):
                    continue
                if os.path.islink(full) and not inside(os.path.realpath(full), self.root):
                    listing.failures.append((path, "Skipped: it links outside the folder."))
                    continue
                try:
                    info = os.stat(full)
                except FileNotFoundError:  # a dangling link, or deleted while walking
                    continue
                except OSError as exc:
                    listing.failures.append((path, f"kb cannot read this file ({exc.strerror or exc})."))
                    continue
                # FIFOs, sockets and devices: reading one could block forever.
                if stat.S_ISREG(info.st_mode):
                    found[path] = info
        return found

    def _ref(self, path: str, info: os.stat_result, previous: Any, listing: Listing) -> str | None:
        """The file's content hash, reused from the cursor when size and times are unchanged."""
        if info.st_size > self.limits.max_bytes:
            # Listed, so kb keeps reporting it (fetch says it is too large), but never hashed.
            return f"{_TOO_LARGE}:{info.st_size}:{info.st_mtime_ns}"
        # ctime as well as mtime: copies that preserve mtime (rsync -t, cp -p) still change ctime.
        if (
            isinstance(previous, list)
            and len(previous) == 4
            and previous[:3] == [info.st_size, info.st_mtime_ns, info.st_ctime_ns]
        ):
            return str(previous[3])
        try:
            return _sha256(os.path.join(self.root, *path.split("/")), self.limits.max_bytes)
        except FileNotFoundError:  # deleted since the walk: simply not there any more
            return None
        # A failure, not a missing page: kb keeps the documents of failed paths (a file that
        # cannot be read is not a file that is gone), so the rest of the listing stays complete.
        except PermissionError:
            listing.failures.append((path, "kb may not read this file (permission denied)."))
            return None
        except OSError as exc:
            listing.failures.append((path, f"kb cannot read this file ({exc.strerror or exc})."))
            return None

    def _relative(self, full: str) -> str:
        return Path(os.path.relpath(full, self.root)).as_posix()

    def fetch(self, page: Page) -> bytes:
        full = os.path.join(self.root, *page.path.split("/"))
        # Checked again at read time: the folder may have changed since it was listed.
        real = os.path.realpath(full)
        if not inside(real, self.root) or real == self.root:
            raise SourceError(f"{page.path}: the file links outside the folder.")
        try:
            with open(real, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise SourceError(f"{page.path} is not a regular file.")
                if info.st_size > self.limits.max_bytes:
                    raise SourceError(self._too_large(page.path, info.st_size))
                data = handle.read(self.limits.max_bytes + 1)
        except FileNotFoundError as exc:
            raise SourceError(f"{page.path} is no longer in the folder.") from exc
        except PermissionError as exc:
            raise SourceError(f"kb may not read {page.path} (permission denied).") from exc
        except IsADirectoryError as exc:
            raise SourceError(f"{page.path} is a folder now, not a file.") from exc
        except OSError as exc:
            raise SourceError(f"kb cannot read {page.path} ({exc.strerror or exc}).") from exc
        if len(data) > self.limits.max_bytes:
            raise SourceError(self._too_large(page.path, len(data)))
        return data

    def _too_large(self, path: str, size: int) -> str:
        return f"{path} is {size_text(size)}; the limit is {size_text(self.limits.max_bytes)}."

    def close(self) -> None:
        """Nothing to release: the folder is read file by file."""
