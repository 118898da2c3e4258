"""A Git repository: the documents in one branch's newest commit, read through the git binary.

The branch is fetched into a bare repository kept between syncs (options["cache_dir"], one per
source), so each sync transfers only the new commits. Every file's ref is its blob id: a page
whose blob is unchanged has the same ref, so kb fetches (`git cat-file`) only the blobs of
pages that changed between the commit synced last time and the new one, never the rest.

The location is a repository on the server (a path inside KB_SOURCE_ROOTS, as for folder
sources) or a remote over https, http or ssh; file://, ext:: and other transports are
refused, and git itself is told to allow no other protocol, nor to follow redirects, so a
remote cannot send it elsewhere. https and http hosts must be public unless the administrator
allowed them (ingestion/connectors/net.py). A token travels in an Authorization header set
through git's environment: never in argv (visible to `ps`), never on disk, never in a message.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from ingestion.connectors.base import Listing, Page, SourceConfig, SourceError, selected
from ingestion.connectors.folder import inside, is_page_path, resolve_in_roots, size_text

# A transport named before "::" (ext::, fd::, any remote helper) can run commands: never.
_TRANSPORT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
# git's scp-like syntax, [user@]host:path; neither user nor host may start with "-" (it would
# reach ssh as an option) and the path may not start with "//" (that is a URL).
_SCP = re.compile(
    r"^(?:[A-Za-z0-9_][A-Za-z0-9._~+-]*@)?(?P<host>[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\]):(?!//)(?P<path>.+)$"
)
_OBJECT_ID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
_FILE_MODES = (b"100644", b"100755")  # symlinks (120000) and submodules (160000) are never pages


@dataclass(frozen=True)
class _Remote:
    url: str  # what git fetches from: a real path on the server, or a URL
    scheme: str  # "file" (a server path), "https", "http" or "ssh"
    # curl's --resolve entry pinning an http(s) host to the addresses checked, so a DNS answer
    # that changes between the check and git's own lookup (rebinding) cannot redirect it.
    resolve: str = ""


def _refuse_location(location: str, limits: Any) -> _Remote:
    """The remote kb may fetch `location` from, or SourceError saying why not."""
    if not location:
        raise SourceError("The repository's address is empty.")
    if location.lower().startswith("file:"):
        raise SourceError(
            "file:// addresses are not accepted: give the repository's path on the server instead, "
            "inside the folders kb may read (KB_SOURCE_ROOTS)."
        )
    if _TRANSPORT.match(location):
        raise SourceError(f"Refused: {location.split('::')[0]}:: transports can run commands on the server.")
    if any(ord(char) < 32 or ord(char) == 127 for char in location):
        raise SourceError("The repository's address may not contain control characters.")
    if location.startswith("/"):
        return _Remote(url=_local_repository(location, limits.roots), scheme="file")
    if any(char.isspace() for char in location):
        raise SourceError("A repository URL may not contain spaces.")
    if "://" in location:
        try:
            parts = urlsplit(location)
            port = parts.port
        except ValueError:
            raise SourceError(f"{location!r} is not a valid URL.") from None
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http", "ssh"):
            raise SourceError(f"kb fetches repositories over https, http or ssh, not {scheme}://.")
        if not parts.hostname or parts.hostname.startswith("-") or (parts.username or "").startswith("-"):
            raise SourceError(f"{location} names no valid host.")
        if scheme != "ssh" and (parts.username or parts.password):
            raise SourceError(
                "Put the username and token in the source's credentials, not in the address: "
                "the address is shown to people, credentials never are."
            )
        if scheme == "ssh":
            # ssh resolves the name again itself; its host key check is what stops a swapped address.
            _check_host(f"https://{_bracketed(parts.hostname)}/", limits, shown=location)
            return _Remote(url=location, scheme=scheme)
        addresses = _check_host(location, limits)
        resolve = ""
        if not _is_address(parts.hostname):  # a literal address needs no pin
            port = port or (443 if scheme == "https" else 80)
            resolve = f"{parts.hostname}:{port}:" + ",".join(_bracketed(address) for address in addresses)
        return _Remote(url=location, scheme=scheme, resolve=resolve)
    match = _SCP.match(location)
    if match:
        _check_host(f"https://{_bracketed(match['host'].strip('[]'))}/", limits, shown=location)
        return _Remote(url=location, scheme="ssh")
    raise SourceError(
        f"{location!r} is neither a repository URL (https://, http://, ssh://, user@host:path) "
        "nor an absolute path on the server."
    )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_host(url: str, limits: Any, *, shown: str = "") -> list[str]:
    """The addresses of the URL's host, refused when private, loopback or link-local unless allowed."""
    # Imported here: net.py brings in requests, which folder and local git sources never need.
    from ingestion.connectors.net import check_url

    try:
        return check_url(url, limits)
    except SourceError as exc:
        if not shown:
            raise
        raise type(exc)(str(exc).replace(url, shown)) from None


def _local_repository(location: str, roots: tuple) -> str:
    """The real path of a repository on the server, refused unless it and its git data lie inside the roots."""
    real = resolve_in_roots(location, roots, what="The repository")
    # A work tree's ".git" may be a link, or a file naming a git directory elsewhere.
    dotgit = os.path.join(real, ".git")
    target = None
    if os.path.isfile(dotgit):
        try:
            with open(dotgit, encoding="utf-8", errors="replace") as handle:
                line = handle.readline().strip()
        except OSError:
            line = ""
        if line.startswith("gitdir:"):
            target = os.path.realpath(os.path.join(real, line[len("gitdir:") :].strip()))
    elif os.path.isdir(dotgit):
        target = os.path.realpath(dotgit)
    if target and not any(inside(target, os.path.realpath(root)) for root in roots):
        raise SourceError(f"{location}: its Git data lies outside the folders kb may read (KB_SOURCE_ROOTS).")
    return real


def _check_branch(branch: str) -> str:
    branch = branch.strip().removeprefix("refs/heads/")
    bad = (
        branch.startswith(("-", "/", "."))
        or branch.endswith(("/", ".", ".lock"))
        or ".." in branch
        or "@{" in branch
        or "//" in branch
        or any(ord(char) < 33 or char in "~^:?*[\\\x7f" for char in branch)
    )
    if bad:
        raise SourceError(f"{branch!r} is not a valid branch name.")
    return branch


class _GitFailed(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


class GitConnector:
    """Lists the documents of one branch of a repository and reads their blobs."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.location = config.location.strip()
        self.remote = _refuse_location(self.location, config.limits)
        self.branch = _check_branch(config.branch) if config.branch.strip() else ""
        username = str(config.credentials.get("username") or "")
        self._token = str(config.credentials.get("token") or "")
        self._secrets = [secret for secret in (self._token,) if secret]
        self._header = ""
        if self._token:
            if any(char in username + self._token for char in "\r\n\0"):
                raise SourceError("The credentials may not contain line breaks.")
            if self.remote.scheme not in ("https", "http"):
                raise SourceError("A token can only be sent over https or http; ssh uses the server's SSH keys.")
            # Any username works with a personal access token on GitHub and GitLab ("oauth2"
            # is GitLab's own for OAuth tokens); Gitea and Bitbucket want the account's name.
            basic = base64.b64encode(f"{username or 'oauth2'}:{self._token}".encode()).decode()
            self._header = f"Authorization: Basic {basic}"
            self._secrets.append(basic)
        # Without a cache_dir (a one-off check), a temporary one, made on first use and removed by close().
        cache = config.options.get("cache_dir")
        self._temporary = not cache
        self.cache = str(cache) if cache else ""
        self._network_timeout = max(120.0, self.limits.timeout * 10)
        self._local_timeout = max(60.0, self.limits.timeout * 2)

    # -- listing -------------------------------------------------------------------------------

    def list_pages(self, *, known: Mapping[str, str], cursor: Mapping[str, Any]) -> Listing:
        self._ensure_cache()
        branch = self.branch or self._default_branch()
        commit = self._fetch_branch(branch)
        listing = Listing()
        blobs = self._tree(commit)
        paths = listing.within_budget(list(blobs), self.limits.max_pages)
        previous = cursor.get("dates") if isinstance(cursor.get("dates"), dict) else {}
        dates = self._dates(commit, {path: blobs[path] for path in paths}, previous)
        template = str(self.config.options.get("web_url") or "")
        for path in paths:
            url = ""
            if template:
                url = (
                    template.replace("{commit}", commit)
                    .replace("{branch}", quote(branch, safe="/"))
                    .replace("{path}", quote(path, safe="/"))
                )
            listing.pages.append(Page(path=path, ref=blobs[path], url=url, modified=_parse_date(dates[path])))
        listing.cursor = {
            "commit": commit,
            "branch": branch,
            "dates": {path: [blobs[path], dates[path]] for path in paths},
        }
        return listing

    def _ensure_cache(self) -> None:
        if not self.cache:
            self.cache = tempfile.mkdtemp(prefix="kb-git-")
        if os.path.isfile(os.path.join(self.cache, "HEAD")):
            return
        os.makedirs(self.cache, exist_ok=True)
        try:
            self._git("init", "--bare", "--quiet", timeout=self._local_timeout)
        except _GitFailed as failed:
            raise SourceError(f"kb could not prepare its copy of the repository: {self._detail(failed)}") from None

    def _default_branch(self) -> str:
        """The branch the remote's HEAD points at (what a clone would check out)."""
        try:
            out = self._git("ls-remote", "--symref", self.remote.url, "HEAD", network=True)
        except _GitFailed as failed:
            raise SourceError(self._explain(failed, "")) from None
        for line in out.decode("utf-8", "replace").splitlines():
            if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
                return _check_branch(line[len("ref: ") : -len("\tHEAD")])
        if not out.strip():
            raise SourceError(f"The repository {self.location} is empty: it has no commits yet.")
        raise SourceError(f"kb cannot tell the default branch of {self.location}: name the branch to sync.")

    def _fetch_branch(self, branch: str) -> str:
        """Fetch the branch into the cache (only what is new) and return its commit."""
        ref = f"refs/heads/{branch}"
        try:
            self._git(
                "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                "--", self.remote.url, f"+{ref}:{ref}",
                network=True,
            )  # fmt: skip
            out = self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", timeout=self._local_timeout)
        except _GitFailed as failed:
            raise SourceError(self._explain(failed, branch)) from None
        return out.decode().strip()

    def _tree(self, commit: str) -> dict[str, str]:
        """Path -> blob id of every selected document in the commit."""
        try:
            out = self._git("ls-tree", "-r", "-z", "--full-tree", commit, timeout=self._local_timeout)
        except _GitFailed as failed:
            raise SourceError(f"kb could not read the commit {commit[:12]}: {self._detail(failed)}") from None
        blobs: dict[str, str] = {}
        for entry in out.split(b"\0"):
            if not entry:
                continue
            info, _, raw_path = entry.partition(b"\t")
            mode, kind, blob = info.split(b" ")
            if kind != b"blob" or mode not in _FILE_MODES:
                continue
            path = raw_path.decode("utf-8", "surrogateescape")
            if not path.isprintable() or not is_page_path(path):
                continue
            if selected(path, self.config.include, self.config.exclude):
                blobs[path] = blob.decode()
        return blobs

    def _dates(self, commit: str, blobs: Mapping[str, str], previous: Mapping[str, Any]) -> dict[str, str]:
        """When each page last changed on the branch: kept from the cursor while its blob is the same."""
        dates: dict[str, str] = {}
        needed: set[str] = set()
        for path, blob in blobs.items():
            stored = previous.get(path)
            if isinstance(stored, list) and len(stored) == 2 and stored[0] == blob:
                dates[path] = str(stored[1])
            else:
                needed.add(path)
        if not needed:
            return dates
        # One pass down the branch's own history, newest first, stopping as soon as every
        # changed page is found: on later syncs that is within the few newest commits.
        # --first-parent dates a merged change by its merge, when it reached the branch.
        head_date = ""
        with closing(self._log(commit)) as log:
            for date, paths in log:
                head_date = head_date or date
                for path in paths:
                    if path in needed:
                        dates[path] = date
                        needed.discard(path)
                if not needed:
                    break
        # Not found (history cut short by the time limit): the commit's own date, not a failed sync.
        if needed:
            fallback = head_date or self._commit_date(commit)
            dates.update(dict.fromkeys(needed, fallback))
        return dates

    def _log(self, commit: str) -> Iterator[tuple[str, list[str]]]:
        """(commit date, paths changed) along the branch, streamed; stops reading when the caller stops."""
        argv = self._argv(
            "log", "--first-parent", "--no-renames", "--name-only", "-z", "--format=%x01%cI", commit, "--"
        )
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=self._env(), start_new_session=True,
        )  # fmt: skip
        timer = threading.Timer(self._network_timeout, _kill, (process,))
        timer.start()
        try:
            date, paths, rest = "", [], b""
            while chunk := process.stdout.read(1 << 16):
                *tokens, rest = (rest + chunk).split(b"\0")
                for token in tokens:
                    if token.startswith(b"\x01"):
                        if date:
                            yield date, paths
                        date, paths = token[1:].decode(), []
                    elif token:
                        # git puts one newline between a commit's header and its paths.
                        paths.append(token.removeprefix(b"\n").decode("utf-8", "surrogateescape"))
            if date:
                yield date, paths
        finally:
            timer.cancel()
            _kill(process)
            process.stdout.close()
            process.wait()

    def _commit_date(self, commit: str) -> str:
        try:
            return self._git("show", "-s", "--format=%cI", commit, timeout=self._local_timeout).decode().strip()
        except _GitFailed:
            return datetime.now(UTC).isoformat()

    # -- reading -------------------------------------------------------------------------------

    def fetch(self, page: Page) -> bytes:
        """The page's blob, read from the cache: called only for pages whose ref kb has not stored."""
        if not _OBJECT_ID.match(page.ref):
            raise SourceError(f"{page.path}: {page.ref!r} is not a Git object id.")
        self._ensure_cache()
        try:
            size = int(self._git("cat-file", "-s", page.ref, timeout=self._local_timeout))
        except (_GitFailed, ValueError):
            raise SourceError(f"{page.path} is not in kb's copy of the repository any more; sync again.") from None
        if size > self.limits.max_bytes:
            raise SourceError(f"{page.path} is {size_text(size)}; the limit is {size_text(self.limits.max_bytes)}.")
        try:
            return self._git("cat-file", "blob", page.ref, timeout=self._local_timeout)
        except _GitFailed as failed:
            raise SourceError(f"kb could not read {page.path}: {self._detail(failed)}") from None

    def close(self) -> None:
        if self._temporary and self.cache:
            shutil.rmtree(self.cache, ignore_errors=True)
            self.cache = ""

    # -- running git ---------------------------------------------------------------------------

    def _argv(self, *args: str) -> list[str]:
        if self.remote.scheme == "file":
            # No safe.directory override: a repository owned by another user is git's to refuse
            # (it guards against crafted repositories) and the administrator's to trust.
            protocols = ["-c", "protocol.file.allow=always"]
        else:
            protocols = ["-c", f"protocol.{self.remote.scheme}.allow=always"]
        if self.remote.scheme in ("https", "http"):
            # No proxy (as for every other source, net.py): it would resolve the name unchecked.
            protocols += ["-c", "http.proxy="]
        if self.remote.resolve:
            protocols += ["-c", f"http.curloptResolve={self.remote.resolve}"]
        return [
            "git",
            # Only the one transport this source uses: no file://, ext::, fd:: nor git://,
            # even when a remote or a global insteadOf rewrite asks for one.
            "-c", "protocol.allow=never", *protocols,
            "-c", "http.followRedirects=false",  # a redirect could point at a private address
            # Stalled transfers end instead of hanging the worker.
            "-c", "http.lowSpeedLimit=1000", "-c", f"http.lowSpeedTime={max(10, int(self.limits.timeout))}",
            # No credential helper may store the token or answer for it, no askpass program run.
            "-c", "credential.helper=", "-c", "core.askPass=",
            "-c", "core.hooksPath=/dev/null",
            "-c", "gc.autoDetach=false", "-c", "maintenance.autoDetach=false",
            "--git-dir", self.cache,
            *args,
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        # Nothing of the worker's own GIT_* environment (GIT_DIR, GIT_CONFIG_PARAMETERS, traces).
        env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
        if self.remote.scheme in ("https", "http"):
            for key in [key for key in env if key.lower() in _PROXY_VARIABLES]:
                del env[key]
        env.update(LC_ALL="C", LANGUAGE="C", GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="")
        if self._header:
            # Config through the environment: seen by git and its http helper, not by `ps`.
            env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader", GIT_CONFIG_VALUE_0=self._header)
        return env

    def _git(self, *args: str, network: bool = False, timeout: float | None = None) -> bytes:
        """Run git; its stdout, or _GitFailed with its stderr (not yet scrubbed)."""
        limit = self._network_timeout if network else (timeout or self._local_timeout)
        # A session of its own: no terminal for ssh to prompt on, and the whole group
        # (git, git-remote-https, ssh) can be ended on timeout.
        process = subprocess.Popen(
            self._argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self._env(), start_new_session=True,
        )  # fmt: skip
        try:
            out, err = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill(process)
            process.communicate()
            raise _GitFailed(f"fatal: git took longer than {limit:.0f} seconds and was stopped") from None
        if process.returncode != 0:
            raise _GitFailed(err.decode("utf-8", "replace"))
        return out

    # -- messages ------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        text = _USERINFO.sub(r"\1***@", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return "\n".join(line for line in text.splitlines() if "authorization:" not in line.lower())

    def _detail(self, failed: _GitFailed) -> str:
        """git's own reason, last fatal/error line first, scrubbed of credentials."""
        lines = [line.strip() for line in self._scrub(failed.stderr).splitlines() if line.strip()]
        chosen = [line for line in lines if line.startswith(("fatal:", "error:"))] or lines
        detail = chosen[0] if chosen else "git failed without saying why"
        return detail.removeprefix("fatal: ").removeprefix("error: ")[:300]

    def _explain(self, failed: _GitFailed, branch: str) -> str:
        """A message a person can act on for a failed ls-remote or fetch."""
        text = failed.stderr
        where = self._scrub(self.location)
        detail = self._detail(failed)
        if "couldn't find remote ref" in text:
            return f"The branch {branch!r} does not exist in {where}."
        if "Host key verification failed" in text:
            return f"The SSH host key of {where} is unknown: add it to the known_hosts of the user kb runs as."
        if re.search(r"Permission denied \((publickey|password|keyboard)", text):
            return f"{where} refused kb's SSH key: give the kb user's key read access to the repository."
        if re.search(r"Authentication failed|could not read (Username|Password)|returned error: 40[13]", text):
            if self._token:
                return f"{where} refused the credentials: check the username and token ({detail})."
            return f"{where} needs credentials: give the source a username and token ({detail})."
        if re.search(r"returned error: 30[1278]", text):
            return f"{where} redirects, and kb follows no redirects: give the repository's final address."
        if "dubious ownership" in text:
            named = re.search(r"dubious ownership in repository at '([^'\n]+)'", text)
            return (
                f"git refuses {where}: it belongs to another user than the one kb runs as. To trust it, run "
                f"`git config --global --add safe.directory {named[1] if named else where}` as kb's user."
            )
        if re.search(r"returned error: 404|does not appear to be a git repository|[Rr]epository not found", text):
            return f"There is no Git repository at {where} (or kb may not see it)."
        if re.search(r"took longer than", text):
            return f"kb gave up on {where}: {detail}."
        return f"kb could not fetch {where}: {detail}."


def _parse_date(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None


def _kill(process: subprocess.Popen) -> None:
    """End git and everything it started (the http helper, ssh)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
