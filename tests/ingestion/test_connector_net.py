"""The address guard of the connectors' HTTP (ingestion/connectors/net.py).

Traffic only ever goes to loopback: every private or public address below must be refused
before a connection opens, and the `no_connect` fixture fails the test if one does.
"""

from __future__ import annotations

import gzip
import ipaddress
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from ingestion.connectors.base import Limits, SourceError
from ingestion.connectors.net import (
    HTTPStatusError,
    RefusedAddress,
    TooLarge,
    check_url,
    fetch_bytes,
    guarded_session,
    redact_url,
    why_not_public,
)
from tests.site_standin import Site

LOCAL = frozenset({"127.0.0.1"})


@pytest.fixture
def fake_dns(monkeypatch):
    """Let names resolve to chosen addresses: fake_dns({"intranet.example": ["10.1.2.3"]}).

    A value may also be a callable returning the list, to answer differently each time.
    Other names resolve as usual. Returns the names looked up, in order.
    """
    real = socket.getaddrinfo
    lookups: list[str] = []

    def install(table: dict) -> list[str]:
        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            name = host.decode() if isinstance(host, bytes) else host
            if name not in table:
                return real(host, port, family, type, proto, flags)
            lookups.append(name)
            answer = table[name]
            addresses = answer() if callable(answer) else answer
            results = []
            for address in addresses:
                if ipaddress.ip_address(address).version == 6:
                    results.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port or 0, 0, 0)))
                else:
                    results.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0)))
            return results

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return lookups

    return install


# --- refused before any connection ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/", "127.0.0.1 is a loopback address"),
        ("http://localhost:{port}/", "localhost resolves to 127.0.0.1, which is a loopback address"),
        ("http://2130706433:{port}/", "resolves to 127.0.0.1, which is a loopback"),
        ("http://0x7f000001:{port}/", "resolves to 127.0.0.1, which is a loopback"),
        ("http://0177.0.0.1:{port}/", "resolves to 127.0.0.1, which is a loopback"),
        ("http://127.1:{port}/", "resolves to 127.0.0.1, which is a loopback"),
        ("http://[::1]:{port}/", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/", "an IPv6 form of 127.0.0.1, a loopback address"),
        ("http://0.0.0.0:{port}/", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is the cloud metadata address"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "192.168.1.1 is a private address"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://[fd12:3456::1]/", "unique-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[2002:a00:1::]/", "an IPv6 form of 10.0.0.1"),  # 6to4
        ("http://[64:ff9b::7f00:1]/", "an IPv6 form of 127.0.0.1"),  # NAT64
        ("https://user:secret@10.0.0.1/", "10.0.0.1 is a private address"),
    ],
)
def test_private_addresses_are_refused_before_connecting(site, no_connect, url, reason):
    url = url.format(port=site.port)
    session = guarded_session(Limits())
    started = time.monotonic()
    with pytest.raises(RefusedAddress) as refused:
        session.get(url)
    assert reason in str(refused.value)
    assert "KB_SOURCE_ALLOWED_HOSTS" in str(refused.value)
    assert "secret" not in str(refused.value)
    assert time.monotonic() - started < 2
    assert site.requests == []


def test_the_refusal_is_a_source_error_callers_can_catch(site, no_connect):
    # requests wraps what an adapter's connection raises; the guard's error must come through as is.
    with pytest.raises(SourceError, match="Refused"):
        fetch_bytes(guarded_session(Limits()), f"{site.url}/", limits=Limits())
    with pytest.raises(RefusedAddress):
        guarded_session(Limits()).request("POST", f"{site.url}/", data=b"x")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://ftp.example.com/file", "gopher://127.0.0.1:70/"])
def test_other_schemes_are_refused(no_connect, url):
    with pytest.raises(RefusedAddress, match="only http and https"):
        guarded_session(Limits(allowed_hosts=LOCAL)).get(url)
    with pytest.raises(RefusedAddress):
        check_url(url, Limits())


def test_names_resolving_to_private_addresses_are_refused(fake_dns, no_connect):
    fake_dns(
        {
            "intranet.example": ["10.1.2.3"],
            "loopback.example": ["127.0.0.1"],
            "mixed.example": ["93.184.215.14", "192.168.0.7"],  # every address must be public
            "mapped.example": ["::ffff:10.0.0.1"],
        }
    )
    session = guarded_session(Limits())
    for name, address in [
        ("intranet.example", "10.1.2.3"),
        ("loopback.example", "127.0.0.1"),
        ("mixed.example", "192.168.0.7"),
        ("mapped.example", "::ffff:10.0.0.1"),
    ]:
        shown = ipaddress.ip_address(address)  # Python 3.11 writes ::ffff:10.0.0.1 as ::ffff:a00:1
        with pytest.raises(RefusedAddress, match=f"{name} resolves to {shown}, which"):
            session.get(f"http://{name}/")


def test_public_addresses_pass_the_check(fake_dns, no_connect):
    fake_dns({"public.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})
    assert check_url("https://public.example/page", Limits()) == [
        "93.184.215.14",
        "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
    ]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.255.255.255", False),
        ("172.31.0.1", False),
        ("100.127.255.254", False),
        ("198.18.0.1", False),  # benchmarking
        ("240.0.0.1", False),  # reserved
        ("255.255.255.255", False),
        ("::", False),
        ("ff02::1", False),
        ("fec0::1", False),  # site-local
        ("::ffff:8.8.8.8", True),
        ("2001::a00:1", False),  # Teredo
    ],
)
def test_which_addresses_are_public(address, public):
    assert (why_not_public(ipaddress.ip_address(address)) is None) is public


def test_unresolvable_host_is_a_source_error(fake_dns, no_connect):
    def fail():
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    fake_dns({"nowhere.example": fail})
    with pytest.raises(SourceError, match="Cannot resolve the host of http://nowhere.example/"):
        guarded_session(Limits()).get("http://nowhere.example/")


# --- allowed hosts ----------------------------------------------------------------------------


def test_an_allowed_address_is_read(site):
    site.add("/page", "hello", content_type="text/plain")
    limits = Limits(allowed_hosts=LOCAL)
    body, response = fetch_bytes(guarded_session(limits), f"{site.url}/page", limits=limits)
    assert body == b"hello"
    assert response.status_code == 200
    assert response.text == "hello"


def test_an_allowed_address_allows_every_name_for_it(site):
    site.add("/", "ok")
    limits = Limits(allowed_hosts=LOCAL)
    assert guarded_session(limits).get(f"http://2130706433:{site.port}/").text == "ok"
    assert guarded_session(limits).get(f"http://localhost:{site.port}/").text == "ok"


def test_an_allowed_name_allows_its_addresses(site, fake_dns):
    site.add("/", "wiki")
    fake_dns({"wiki.corp": ["127.0.0.1"]})
    limits = Limits(allowed_hosts=frozenset({"WIKI.corp."}))  # case and a trailing dot do not matter
    assert guarded_session(limits).get(f"http://wiki.corp:{site.port}/").text == "wiki"
    assert site.requests[-1][1]["Host"] == f"wiki.corp:{site.port}"
    # ... but not another name for the same address.
    with pytest.raises(RefusedAddress):
        guarded_session(limits).get(f"{site.url}/")


def test_the_connection_is_pinned_to_the_checked_address(site, fake_dns):
    # DNS rebinding: the name resolves to a checked address once, to anything else afterwards.
    site.add("/", "pinned")
    answers = iter([["127.0.0.1"]])

    def rebinding():
        try:
            return next(answers)
        except StopIteration:
            raise socket.gaierror(socket.EAI_NONAME, "resolved a second time") from None

    lookups = fake_dns({"pinned.example": rebinding})
    limits = Limits(allowed_hosts=LOCAL)
    response = guarded_session(limits).get(f"http://pinned.example:{site.port}/")
    assert response.text == "pinned"
    assert response.url == f"http://pinned.example:{site.port}/"
    assert lookups == ["pinned.example"]  # urllib3 did not resolve the name again
    assert site.requests[0][1]["Host"] == f"pinned.example:{site.port}"


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_https_keeps_the_name_for_sni_and_the_certificate_check(tmp_path, fake_dns):
    cert, key = _self_signed(tmp_path, "secure.example")
    server = Site(tls=(cert, key))
    try:
        server.add("/", "over tls")
        fake_dns({"secure.example": ["127.0.0.1"]})
        limits = Limits(allowed_hosts=LOCAL)
        session = guarded_session(limits)
        session.verify = str(cert)
        assert session.get(f"https://secure.example:{server.port}/").text == "over tls"
        assert server.server_names == ["secure.example"]
        assert server.requests[0][1]["Host"] == f"secure.example:{server.port}"
        # The certificate names secure.example, not the address the connection was pinned to.
        with pytest.raises(SourceError, match="TLS error reading"):
            fetch_bytes(session, f"https://127.0.0.1:{server.port}/", limits=limits)
    finally:
        server.close()


def test_a_redirect_to_a_refused_address_is_refused(site, fake_dns):
    other = Site()
    try:
        other.add("/secret", "secret")
        fake_dns({"site.example": ["127.0.0.1"]})
        site.redirect("/go", f"http://127.0.0.1:{other.port}/secret")
        site.redirect("/meta", "http://169.254.169.254/latest/meta-data/")
        limits = Limits(allowed_hosts=frozenset({"site.example"}))
        session = guarded_session(limits)
        with pytest.raises(RefusedAddress, match=f"Refused http://127.0.0.1:{other.port}/secret"):
            session.get(f"http://site.example:{site.port}/go")
        with pytest.raises(RefusedAddress, match="cloud metadata"):
            fetch_bytes(session, f"http://site.example:{site.port}/meta", limits=limits)
        assert other.requests == []
    finally:
        other.close()


def test_a_redirect_from_localhost_to_another_name_is_refused(site):
    other = Site()
    try:
        site.redirect("/go", f"http://127.0.0.1:{other.port}/")
        with pytest.raises(RefusedAddress):
            guarded_session(Limits(allowed_hosts=frozenset({"localhost"}))).get(f"http://localhost:{site.port}/go")
        assert site.paths() == ["/go"]
        assert other.requests == []
    finally:
        other.close()


def test_a_redirect_within_allowed_hosts_is_followed(site):
    site.redirect("/old", "/new", status=301)
    site.add("/new", "moved")
    limits = Limits(allowed_hosts=LOCAL)
    body, response = fetch_bytes(guarded_session(limits), f"{site.url}/old", limits=limits)
    assert body == b"moved"
    assert response.url == f"{site.url}/new"


def test_adapters_mounted_later_and_environment_proxies_are_ignored(site, monkeypatch):
    site.add("/", "direct")
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("http_proxy", "http://10.9.9.9:3128")
    session = guarded_session(Limits(allowed_hosts=LOCAL))
    session.mount("http://", requests.adapters.HTTPAdapter())
    assert session.get(f"{site.url}/").text == "direct"
    with pytest.raises(RefusedAddress):
        session.get("http://10.0.0.1/")


# --- sizes, errors, timeouts ---------------------------------------------------------------------


def test_a_large_content_length_is_refused_before_reading(site):
    site.add("/big", b"x" * 1000, content_type="application/pdf")
    limits = Limits(allowed_hosts=LOCAL, max_bytes=100)
    with pytest.raises(TooLarge, match="larger than the 100 bytes limit"):
        guarded_session(limits).get(f"{site.url}/big", stream=True)
    with pytest.raises(SourceError, match=f"{site.url}/big is larger than the 100 bytes limit"):
        fetch_bytes(guarded_session(limits), f"{site.url}/big", limits=limits)


def test_a_large_body_without_content_length_is_cut_at_the_limit(site):
    site.add("/stream", b"x" * 5000, content_type="text/plain", send_length=False)
    limits = Limits(allowed_hosts=LOCAL, max_bytes=1024)
    with pytest.raises(SourceError, match="larger than the 1 KB limit"):
        fetch_bytes(guarded_session(limits), f"{site.url}/stream", limits=limits)
    with pytest.raises(TooLarge):  # also for clients that read .content without streaming
        guarded_session(limits).get(f"{site.url}/stream")


def test_a_compressed_body_counts_once_decompressed(site):
    site.add("/bomb", gzip.compress(b"\0" * 200_000), content_type="text/plain", headers={"Content-Encoding": "gzip"})
    limits = Limits(allowed_hosts=LOCAL, max_bytes=10_000)
    with pytest.raises(TooLarge):
        fetch_bytes(guarded_session(limits), f"{site.url}/bomb", limits=limits)


def test_a_body_at_the_limit_is_read(site):
    site.add("/exact", b"y" * 100, content_type="text/plain", send_length=False)
    limits = Limits(allowed_hosts=LOCAL, max_bytes=100)
    assert fetch_bytes(guarded_session(limits), f"{site.url}/exact", limits=limits)[0] == b"y" * 100


def test_http_errors_are_source_errors_without_credentials(site):
    site.add("/gone", "gone", status=410)
    limits = Limits(allowed_hosts=LOCAL)
    session = guarded_session(limits)
    with pytest.raises(HTTPStatusError) as error:
        fetch_bytes(session, f"http://alice:s3cret@127.0.0.1:{site.port}/missing", limits=limits)
    assert str(error.value) == f"HTTP 404 Not Found from {site.url}/missing"
    assert error.value.status == 404
    with pytest.raises(SourceError, match="HTTP 410"):
        fetch_bytes(session, f"{site.url}/gone", limits=limits)


def test_a_refused_connection_is_a_source_error_without_credentials():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    limits = Limits(allowed_hosts=LOCAL)
    with pytest.raises(SourceError) as error:
        fetch_bytes(guarded_session(limits), f"http://bob:hunter2@127.0.0.1:{port}/", limits=limits)
    assert str(error.value) == f"Cannot connect to http://127.0.0.1:{port}/: Connection refused."


def test_every_request_gets_the_default_timeout(site):
    site.add("/slow", "late", sleep=1.5)
    limits = Limits(allowed_hosts=LOCAL, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        guarded_session(limits).get(f"{site.url}/slow")  # no timeout given: limits.timeout applies
    with pytest.raises(SourceError, match="Timed out after 0.2 s reading"):
        fetch_bytes(guarded_session(limits), f"{site.url}/slow", limits=limits)
    assert time.monotonic() - started < 1.4


def test_redact_url_drops_user_and_password():
    assert redact_url("https://u:p@wiki.corp:8443/a?b=1#c") == "https://wiki.corp:8443/a?b=1#c"
    assert redact_url("https://wiki.corp/") == "https://wiki.corp/"
