"""HTTP for connectors: a requests session that only reaches public addresses or allowed hosts.

A source's URL is typed by an administrator, but the pages it links or redirects to are not,
and kb runs inside the network it indexes: without a guard a crawl could be steered to the
cloud metadata service, an admin console on localhost or any private server. Every request
(the first and every redirect hop) is therefore checked before a socket opens:

- http and https only;
- the host is resolved and every address must be public (`ipaddress.is_global`, and not
  multicast, reserved, or a private IPv4 address wrapped in IPv6), unless the host name as
  written, or the address, is in `Limits.allowed_hosts`;
- the connection goes to an address that was checked (pinned), so a DNS answer that changes
  between the check and the connect (DNS rebinding) cannot redirect it.

Pure: nothing here imports kb.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError

from ingestion.connectors.base import Limits, SourceError

__all__ = [
    "GuardedSession",
    "HTTPStatusError",
    "RefusedAddress",
    "TooLarge",
    "check_url",
    "fetch_bytes",
    "guarded_session",
    "redact_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_HINT = "add the host to KB_SOURCE_ALLOWED_HOSTS if it is a trusted intranet server."
MAX_REDIRECTS = 10
CHUNK = 64 * 1024

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_METADATA = ipaddress.ip_address("169.254.169.254")


class RefusedAddress(SourceError):
    """A URL whose scheme or address kb may not reach."""


class TooLarge(SourceError):
    """A response larger than Limits.max_bytes."""


class HTTPStatusError(SourceError):
    """The server answered with an HTTP error status (4xx, 5xx)."""

    def __init__(self, message: str, *, status: int, url: str) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


def redact_url(url: str) -> str:
    """The URL without its user:password@ part, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def human_size(size: int) -> str:
    """A byte count as a person reads it: "50 MB", "1.5 KB", "100 bytes"."""
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= factor:
            return f"{round(size / factor, 1):g} {unit}"
    return f"{size} bytes"


def too_large(url: str, limit: int) -> TooLarge:
    return TooLarge(f"{redact_url(url)} is larger than the {human_size(limit)} limit.")


# --- addresses ------------------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in network for network in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_not_public(ip: IPAddress) -> str | None:
    """Why an address is not a public one ("a loopback address"), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            # The IPv4 address inside decides: that is the host such an address reaches.
            reason = why_not_public(inner)
            return f"an IPv6 form of {inner}, {reason}" if reason else None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip == _METADATA:
        return "the cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if ip in _CGNAT:
        return "a carrier-grade NAT (shared) address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL:
        return "a unique-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _allowed(limits: Limits) -> tuple[set[str], set[IPAddress]]:
    """The allowed host names (lower case, without a trailing dot) and the allowed addresses."""
    names: set[str] = set()
    addresses: set[IPAddress] = set()
    for entry in limits.allowed_hosts:
        entry = entry.strip().lower().rstrip(".")
        ip = _parse_ip(entry)
        if ip is None:
            names.add(entry)
        else:
            addresses.add(ip)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                addresses.add(ip.ipv4_mapped)
    return names, addresses


def _resolve(host: str, port: int, url: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or "unknown host"
        raise SourceError(f"Cannot resolve the host of {redact_url(url)}: {reason}.") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise SourceError(f"Cannot resolve the host of {redact_url(url)}.")
    return addresses


def check_url(url: str, limits: Limits) -> list[str]:
    """Check a URL's scheme and every address its host resolves to; return them, in order.

    Raise RefusedAddress when kb may not reach it, SourceError when the host does not resolve.
    """
    safe = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedAddress(f"Refused {safe}: it is not a valid URL.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        what = f"{scheme}://" if scheme else "a relative address"
        raise RefusedAddress(f"Refused {safe}: only http and https addresses can be read, not {what}.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise RefusedAddress(f"Refused {safe}: it names no host.")
    names, allowed_ips = _allowed(limits)
    literal = _parse_ip(host)
    host_allowed = host in names or (literal is not None and literal in allowed_ips)
    addresses = _resolve(host, port or (443 if scheme == "https" else 80), url)
    for address in addresses:
        ip = _parse_ip(address)
        if ip is None:
            raise RefusedAddress(f"Refused {safe}: its host resolves to {address!r}, which is not an address.")
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if host_allowed or ip in allowed_ips or (mapped is not None and mapped in allowed_ips):
            continue
        reason = why_not_public(ip)
        if reason:
            shown = host if literal is not None else f"{host} resolves to {ip}, which"
            raise RefusedAddress(f"Refused {safe}: {shown} is {reason}; {ALLOW_HINT}")
    return addresses


# --- the session ------------------------------------------------------------------------------


class _CappedBody:
    """A urllib3 response whose decoded body may not exceed a byte limit (a gzip bomb included)."""

    def __init__(self, raw: Any, limit: int, url: str) -> None:
        self._raw = raw
        self._limit = limit
        self._url = url
        self._read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def _count(self, size: int) -> None:
        self._read += size
        if self._read > self._limit:
            self._raw.close()
            raise too_large(self._url, self._limit)

    def stream(self, amt: int | None = CHUNK, decode_content: bool | None = None) -> Iterator[bytes]:
        for chunk in self._raw.stream(amt, decode_content=decode_content):
            self._count(len(chunk))
            yield chunk

    def read(self, amt: int | None = None, decode_content: bool | None = None, **kwargs: Any) -> bytes:
        if amt is not None:
            data = self._raw.read(amt, decode_content=decode_content, **kwargs)
            self._count(len(data))
            return data
        # Read a whole body in chunks so an endless one is cut at the limit, not after it.
        chunks = []
        while chunk := self._raw.read(CHUNK, decode_content=decode_content, **kwargs):
            self._count(len(chunk))
            chunks.append(chunk)
        return b"".join(chunks)


def _connect_failed(exc: requests.ConnectionError) -> bool:
    """Whether the connection could not be opened at all (so nothing was sent)."""
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, MaxRetryError) and isinstance(cause.reason, NewConnectionError)


class _GuardAdapter(HTTPAdapter):
    """Check every request's address, then connect only to the address checked.

    Pinning: requests asks the adapter for a urllib3 pool keyed by (scheme, host, port); we
    key it by the checked IP instead, so urllib3 connects to that IP and never resolves the name
    again. The name stays where it matters: the Host header, and for https the TLS SNI
    (`server_hostname`) and the certificate check (`assert_hostname`). Both are public urllib3
    pool arguments and part of its pool key, so two names on one IP never share a TLS pool.
    This is sturdier than patching urllib3's private connection internals, and unlike
    rewriting the URL to the IP it leaves response.url, cookies and redirects untouched.
    """

    def __init__(self, limits: Limits) -> None:
        super().__init__(max_retries=0)
        self.limits = limits

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        address = getattr(request, "kb_address", None)
        if address is None:  # only reached through send(), which always pins
            raise RefusedAddress(f"Refused {redact_url(request.url or '')}: its address was not checked.")
        hostname = host_params["host"]
        host_params["host"] = address
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = hostname
            pool_kwargs["assert_hostname"] = hostname
        return host_params, pool_kwargs

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = request.url or ""
        addresses = check_url(url, self.limits)
        pinned = request.copy()
        pinned.headers["Host"] = urlsplit(url).netloc.rpartition("@")[2]
        if timeout is None:
            timeout = self.limits.timeout
        failure: requests.ConnectionError | None = None
        for address in addresses:
            pinned.kb_address = address  # type: ignore[attr-defined]
            try:
                # Proxies are ignored: a proxy would resolve the name itself, unchecked.
                response = super().send(pinned, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=None)
                break
            except requests.ConnectionError as exc:
                # Another checked address is tried only when nothing was sent to this one.
                if not _connect_failed(exc):
                    raise
                failure = exc
        else:
            assert failure is not None
            raise failure
        response.request = request  # the caller's request, without our Host header
        length = response.headers.get("Content-Length", "")
        if request.method != "HEAD" and length.isdigit() and int(length) > self.limits.max_bytes:
            response.close()
            raise too_large(url, self.limits.max_bytes)
        response.raw = _CappedBody(response.raw, self.limits.max_bytes, url)
        return response


class GuardedSession(requests.Session):
    """A requests session whose every request passes the address guard.

    Raises SourceError subclasses (RefusedAddress, TooLarge) from send(), unwrapped, so
    client libraries built on requests pass them through to the connector.
    """

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self.limits = limits
        # No proxies or .netrc from the environment: a proxy would reach hosts unchecked, and
        # .netrc would hand its passwords to any host a page links to. A CA bundle is kept.
        self.trust_env = False
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self.verify = bundle
        self.max_redirects = MAX_REDIRECTS
        self.guard = _GuardAdapter(limits)
        self.adapters.clear()
        self.mount("https://", self.guard)
        self.mount("http://", self.guard)

    def get_adapter(self, url: str) -> HTTPAdapter:
        # Whatever a client library mounts, and whatever the scheme: the guard decides
        # (a file:// or ftp:// URL is refused there with a SourceError, not InvalidSchema).
        return self.guard


def guarded_session(limits: Limits) -> requests.Session:
    """A requests session that refuses private addresses (unless allowed) and oversized bodies."""
    return GuardedSession(limits)


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for a failed connection ("Connection refused"), if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return ""


def fetch_bytes(
    session: requests.Session,
    url: str,
    *,
    limits: Limits,
    headers: Mapping[str, str] | None = None,
    allow_redirects: bool = True,
) -> tuple[bytes, requests.Response]:
    """GET a URL's body, at most limits.max_bytes of it; SourceError for anything that fails.

    A 3xx answer (with allow_redirects=False) or a 304 is returned, not raised: the caller
    reads its status and headers.
    """
    safe = redact_url(url)
    try:
        with session.get(
            url, headers=dict(headers or {}), stream=True, timeout=limits.timeout, allow_redirects=allow_redirects
        ) as response:
            if response.status_code >= 400:
                reason = f" {response.reason}" if response.reason else ""
                where = redact_url(response.url or url)
                raise HTTPStatusError(
                    f"HTTP {response.status_code}{reason} from {where}", status=response.status_code, url=where
                )
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_content(CHUNK):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise too_large(url, limits.max_bytes)
                chunks.append(chunk)
            body = b"".join(chunks)
            response._content = body  # so .text and .json() work on the returned response
            return body, response
    except SourceError:
        raise
    except requests.Timeout:
        raise SourceError(f"Timed out after {limits.timeout:g} s reading {safe}.") from None
    except requests.TooManyRedirects:
        raise SourceError(f"Too many redirects from {safe}.") from None
    except requests.exceptions.SSLError as exc:
        detail = _os_reason(exc) or "the certificate could not be verified"
        raise SourceError(f"TLS error reading {safe}: {detail}.") from None
    except requests.ConnectionError as exc:
        detail = _os_reason(exc) or "the connection failed"
        raise SourceError(f"Cannot connect to {safe}: {detail}.") from None
    except requests.RequestException as exc:
        raise SourceError(f"Cannot read {safe}: {type(exc).__name__}.") from None
