"""The reference fetcher (handlers/fetch.py): every SSRF rule, cap and timeout, against real servers on loopback.

Origins are real aiohttp servers on 127.0.0.1 (plain and TLS with a certificate made here); S3 is the real local
versitygw (tests/s3_support.py). Made-up host names reach them through an injected resolver. Every connection
the fetcher opens passes `loop.sock_connect`, which the `connections` fixture records and refuses for anything
but loopback: a refusal test asserts that no connection was attempted at all, and a broken rule could never
send a packet off this machine.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import io
import ipaddress
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from PIL import Image

from handlers.errors import REASONS, ModerationError
from handlers.fetch import (
    FETCH_DEFAULTS,
    Fetcher,
    FetchError,
    FetchSettings,
    parse_reference,
    references_in,
    refusal,
    resolve_request,
    sniff,
)
from tests.s3_support import s3  # noqa: F401 - session fixture

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
STATE = web.AppKey("state", dict)


def jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def png(size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (0, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Addresses the fetcher connected to; any non-loopback connection is refused before it leaves the socket."""
    seen: list[str] = []
    original = asyncio.selector_events.BaseSelectorEventLoop.sock_connect

    async def guarded(self: Any, sock: Any, address: Any) -> None:
        host = str(address[0])
        seen.append(host)
        ip = ipaddress.ip_address(host)
        if (getattr(ip, "ipv4_mapped", None) or ip) not in LOOPBACK:
            raise OSError(f"test guard: refused to connect to non-loopback {host}")
        return await original(self, sock, address)

    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "sock_connect", guarded)
    return seen


class Resolver:
    """An injected DNS: host name -> answers (a list per call, to model answers that change), counting lookups."""

    def __init__(self, answers: dict[str, list[str] | list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answer = self.answers.get(host)
        if answer is None:
            raise OSError(f"{host}: name does not resolve")
        if answer and isinstance(answer[0], list):  # successive answers
            n = sum(1 for h in self.calls if h == host) - 1
            return list(answer[min(n, len(answer) - 1)])  # type: ignore[arg-type]
        return list(answer)  # type: ignore[arg-type]


@asynccontextmanager
async def origin(routes: Callable[[web.Application], None],
                 ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """A real HTTP(S) server on 127.0.0.1:<free port>; yields (port, state) where handlers record what they saw."""
    app = web.Application()
    state: dict[str, Any] = {"hosts": [], "requests": 0, "sent": 0}

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        state["requests"] += 1
        state["hosts"].append(request.headers.get("Host"))
        return await handler(request)

    app.middlewares.append(record)
    app[STATE] = state
    routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, state
    finally:
        await runner.cleanup()


def settings(**kw: Any) -> FetchSettings:
    base: dict[str, Any] = {"private_networks": (ipaddress.ip_network("127.0.0.1/32"),), "max_bytes": 200_000,
                            "connect_timeout_s": 2, "read_timeout_s": 1, "total_timeout_s": 4, "max_redirects": 2}
    return FetchSettings(**(base | kw))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def refused(fetcher: Fetcher, ref: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(ref)
    await fetcher.close()
    return info.value


IMAGE = jpeg()


def image_routes(app: web.Application) -> None:
    async def img(_: web.Request) -> web.Response:
        return web.Response(body=IMAGE, content_type="text/html", headers={"ETag": '"v1"'})  # type is sniffed

    app.router.add_get("/img.jpg", img)


# ---- references --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://h/x", "dict://h:11211/",
                                 "data:image/png;base64,AAAA", "javascript:alert(1)", "example.com/a.jpg",
                                 "/etc/passwd", "HTTPX://h/a", "s3:/bucket/key", "s3://Bad_Bucket/key",
                                 "s3://bucket/", "http:///nohost", "http://h:0/a", "http://exa mple.com/a", "",
                                 "http://h/" + "a" * 5000])
def test_only_http_https_and_s3_references_parse(ref: str) -> None:
    with pytest.raises(FetchError) as info:
        parse_reference(ref)
    assert info.value.reason == "bad_reference" and info.value.status == 400


@pytest.mark.parametrize("ref", ["http://user:pw@img.test/a.jpg", "https://user@img.test/a.jpg",
                                 "http://:pw@img.test/", "http://img.test@evil.test/"])
def test_credentials_in_urls_are_refused(ref: str, connections: list[str]) -> None:
    err = run(refused(Fetcher(settings(), Resolver({"img.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"]})), ref))
    assert err.reason == "bad_reference" and "credentials" in err.message
    assert connections == []


def test_valid_references_parse() -> None:
    ref = parse_reference("s3://my.bucket-1/photos/2026/cat.jpg")
    assert (ref.scheme, ref.bucket, ref.key) == ("s3", "my.bucket-1", "photos/2026/cat.jpg")
    ref = parse_reference("HTTPS://Img.Example.com:8443/a.jpg?X-Amz-Signature=secret#frag")
    assert ref.scheme == "https" and ref.safe == "https://Img.Example.com:8443/a.jpg"  # no signature in logs


# ---- addresses ---------------------------------------------------------------------------------------------
FORBIDDEN = [
    "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "169.254.0.1",
    "0.0.0.0", "100.64.0.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.2.1",
    "198.18.0.1", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1", "2002:7f00:1::1",
    "2002:a9fe:a9fe::1", "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "2001:0:4136:e378:8000:63bf:80ff:fffe",
]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_private_allow_list_is_explicit_and_narrow() -> None:
    allowed = (ipaddress.ip_network("10.96.0.0/12"),)
    assert refusal("10.100.0.7", allowed) is None
    assert refusal("::ffff:10.100.0.7", allowed) is None  # the mapped form of an allowed address is that address
    assert refusal("10.0.0.1", allowed) is not None
    assert refusal("169.254.169.254", allowed) is not None
    assert FetchSettings.from_env({}).private_networks == ()  # off by default
    assert FETCH_DEFAULTS["FETCH_PRIVATE_NETWORKS"][0] == ""


@pytest.mark.parametrize("address", ["10.0.0.1", "169.254.169.254", "127.0.0.1", "::1", "::ffff:127.0.0.1",
                                     "::ffff:a9fe:a9fe", "fd00::1", "0.0.0.0", "224.0.0.1"])
def test_host_resolving_to_a_forbidden_address_is_refused_before_any_connection(address: str,
                                                                                connections: list[str]) -> None:
    resolver = Resolver({"img.test": [address]})
    err = run(refused(Fetcher(settings(private_networks=()), resolver), "http://img.test/img.jpg"))
    assert err.reason == "reference_forbidden" and err.status == 403 and "forbidden address" in err.message
    assert connections == [] and resolver.calls == ["img.test"]


@pytest.mark.parametrize("literal", ["http://127.0.0.2/", "http://[::1]/", "http://[::ffff:127.0.0.2]/",
                                     "http://169.254.169.254/latest/meta-data/", "http://[::ffff:a9fe:a9fe]/",
                                     "http://10.1.2.3/", "http://0.0.0.0/", "https://[fe80::1]/"])
def test_ip_literals_are_checked_too(literal: str, connections: list[str]) -> None:
    resolver = Resolver({})
    err = run(refused(Fetcher(settings(), resolver), literal))
    assert err.reason == "reference_forbidden"
    assert connections == [] and resolver.calls == []


def test_a_mixed_answer_is_refused(connections: list[str]) -> None:
    """One public and one private answer: the start of DNS rebinding; nothing is fetched."""
    err = run(refused(Fetcher(settings(), Resolver({"img.test": ["8.8.8.8", "169.254.169.254"]})),
                      "http://img.test/img.jpg"))
    assert err.reason == "reference_forbidden" and connections == []


def test_no_private_addresses_without_the_switch(connections: list[str]) -> None:
    async def go() -> FetchError:
        async with origin(image_routes) as (port, state):
            err = await refused(Fetcher(settings(private_networks=()), Resolver({"img.test": ["127.0.0.1"]})),
                                f"http://img.test:{port}/img.jpg")
            assert state["requests"] == 0
            return err

    assert run(go()).reason == "reference_forbidden" and connections == []


# ---- pinned address, Host header, SNI ----------------------------------------------------------------------
def test_resolved_once_then_connected_to_that_address_with_the_host_header(connections: list[str]) -> None:
    """The second answer (a metadata address) is never asked for: one lookup, the connection goes to its answer."""
    resolver = Resolver({"img.test": [["127.0.0.1"], ["169.254.169.254"]]})

    async def go() -> None:
        async with origin(image_routes) as (port, state):
            fetcher = Fetcher(settings(), resolver)
            got = await fetcher.fetch(f"http://img.test:{port}/img.jpg")
            await fetcher.close()
            assert got.data == IMAGE and got.content_type == "image/jpeg" and got.etag == '"v1"'
            assert state["hosts"] == [f"img.test:{port}"]
            assert got.echo() == {"ref": f"http://img.test:{port}/img.jpg", "size": len(IMAGE), "etag": '"v1"'}

    run(go())
    assert resolver.calls == ["img.test"] and connections == ["127.0.0.1"]


def _tls(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for `name`, client context trusting only it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


def test_https_keeps_sni_and_verifies_the_original_host(tmp_path: Path, connections: list[str]) -> None:
    server_ctx, client_ctx = _tls(tmp_path, "img.test")
    names: list[str | None] = []
    server_ctx.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment]

    async def go() -> FetchError:
        async with origin(image_routes, server_ctx) as (port, state):
            resolver = Resolver({"img.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
            fetcher = Fetcher(settings(), resolver, ssl_context=client_ctx)
            got = await fetcher.fetch(f"https://img.test:{port}/img.jpg")
            assert got.data == IMAGE and state["hosts"] == [f"img.test:{port}"]
            # A name the certificate does not cover fails verification (pinning the IP does not skip it).
            err = await refused(fetcher, f"https://other.test:{port}/img.jpg")
            return err

    err = run(go())
    assert names[0] == "img.test" and "other.test" in names
    assert err.reason == "fetch_failed" and connections == ["127.0.0.1", "127.0.0.1"]


# ---- redirects ---------------------------------------------------------------------------------------------
def redirect_routes(targets: dict[str, str]) -> Callable[[web.Application], None]:
    def routes(app: web.Application) -> None:
        image_routes(app)
        for path, location in targets.items():
            async def hop(_: web.Request, location: str = location) -> web.Response:
                raise web.HTTPFound(location)

            app.router.add_get(path, hop)

    return routes


def test_redirects_are_followed_up_to_the_limit(connections: list[str]) -> None:
    resolver = Resolver({"img.test": ["127.0.0.1"]})

    async def go() -> tuple[bytes, FetchError]:
        async with origin(redirect_routes({"/a": "/b", "/b": "/img.jpg", "/loop": "/loop"})) as (port, state):
            fetcher = Fetcher(settings(max_redirects=2), resolver)
            got = await fetcher.fetch(f"http://img.test:{port}/a")
            err = await refused(fetcher, f"http://img.test:{port}/loop")
            assert state["requests"] == 3 + 3  # a, b, img; loop x (1 + 2 redirects), then refused
            return got.data, err

    data, err = run(go())
    assert data == IMAGE and err.reason == "fetch_failed" and "redirects" in err.message
    assert resolver.calls == ["img.test"] * 6  # every hop resolved (once) and checked


@pytest.mark.parametrize("location,reason", [
    ("http://meta.test/latest/meta-data/", "reference_forbidden"),  # resolves to 169.254.169.254
    ("http://169.254.169.254/latest/meta-data/", "reference_forbidden"),
    ("http://[::ffff:169.254.169.254]/", "reference_forbidden"),
    ("http://127.0.0.2/", "reference_forbidden"),  # loopback outside the allow-list
    ("http://10.0.0.1/", "reference_forbidden"),
    ("file:///etc/passwd", "bad_reference"),
    ("gopher://img.test/", "bad_reference"),
    ("http://user:pw@img.test/img.jpg", "bad_reference"),
])
def test_every_redirect_hop_is_rechecked(location: str, reason: str, connections: list[str]) -> None:
    resolver = Resolver({"img.test": ["127.0.0.1"], "meta.test": ["169.254.169.254"]})

    async def go() -> FetchError:
        async with origin(redirect_routes({"/r": location})) as (port, state):
            err = await refused(Fetcher(settings(), resolver), f"http://img.test:{port}/r")
            assert state["requests"] == 1
            return err

    err = run(go())
    assert err.reason == reason
    assert connections == ["127.0.0.1"]  # the first hop only


# ---- caps and timeouts -------------------------------------------------------------------------------------
def stream_routes(app: web.Application) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        """A JPEG header, then bytes for ever (no Content-Length): only a cap enforced while reading stops it."""
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        state = request.app[STATE]
        await resp.write(IMAGE[:100])
        try:
            for _ in range(100_000):
                await resp.write(b"\0" * 65536)
                state["sent"] += 65536
        except (ConnectionResetError, ConnectionError):
            pass
        return resp

    async def declared(_: web.Request) -> web.Response:
        return web.Response(body=IMAGE + b"\0" * 300_000, content_type="image/jpeg")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=IMAGE)

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for byte in IMAGE * 10:
            await resp.write(bytes([byte]))
            await asyncio.sleep(0.5)
        return resp

    async def html(_: web.Request) -> web.Response:
        return web.Response(body=b"<html><body>not an image</body></html>", content_type="image/jpeg")

    async def gzipped(_: web.Request) -> web.Response:
        # A PNG with 40000 x 40000 px of zeros would be 4.8 GB decoded; the fetcher never inflates a response.
        return web.Response(body=gzip.compress(png() + b"\0" * 1_000_000), content_type="image/png",
                            headers={"Content-Encoding": "gzip"})

    async def empty(_: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="image/jpeg")

    async def error(_: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404, text="nope")

    for path, fn in (("/endless", endless), ("/declared", declared), ("/slow", slow), ("/drip", drip),
                     ("/html", html), ("/gz", gzipped), ("/empty", empty), ("/503", error), ("/404", missing)):
        app.router.add_get(path, fn)


def fetch_error(path: str, **kw: Any) -> tuple[FetchError, dict[str, Any], float]:
    async def go() -> tuple[FetchError, dict[str, Any], float]:
        async with origin(stream_routes) as (port, state):
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            err = await refused(Fetcher(settings(**kw), Resolver({"img.test": ["127.0.0.1"]})),
                                f"http://img.test:{port}{path}")
            return err, state, loop.time() - t0

    return run(go())


def test_byte_cap_is_enforced_while_streaming(connections: list[str]) -> None:
    err, state, _ = fetch_error("/endless", max_bytes=200_000)
    assert err.reason == "too_large" and err.status == 413 and not err.transient
    assert state["sent"] < 20_000_000  # stopped long before the 6.5 GB the origin would send


def test_declared_length_over_the_cap_is_refused_without_reading(connections: list[str]) -> None:
    err, _, _ = fetch_error("/declared", max_bytes=200_000)
    assert err.reason == "too_large" and str(len(IMAGE) + 300_000) in err.message


def test_read_timeout_is_a_transient_4xx_not_a_hang(connections: list[str]) -> None:
    err, _, took = fetch_error("/slow", read_timeout_s=0.5)
    assert err.reason == "fetch_failed" and err.status == 422 and err.transient and took < 5


def test_total_timeout_bounds_a_slow_drip(connections: list[str]) -> None:
    err, _, took = fetch_error("/drip", read_timeout_s=1, total_timeout_s=2)
    assert err.reason == "fetch_failed" and err.transient and took < 6


def test_connection_refused_is_transient(connections: list[str]) -> None:
    async def go() -> FetchError:
        async with origin(image_routes) as (port, _):
            pass  # closed again: nothing listens on the port now
        return await refused(Fetcher(settings(), Resolver({"img.test": ["127.0.0.1"]})), f"http://img.test:{port}/")

    err = run(go())
    assert err.reason == "fetch_failed" and err.transient


@pytest.mark.parametrize("path,reason,transient", [("/html", "not_an_image", False), ("/gz", "not_an_image", False),
                                                   ("/empty", "empty", False), ("/503", "fetch_failed", True),
                                                   ("/404", "fetch_failed", False)])
def test_content_is_judged_by_its_bytes(path: str, reason: str, transient: bool, connections: list[str]) -> None:
    err, _, _ = fetch_error(path)
    assert (err.reason, err.transient) == (reason, transient) and 400 <= err.status < 500


def test_sniff_knows_the_decoders_formats() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "WEBP")
    assert sniff(buf.getvalue()) == "image/webp"
    assert sniff(jpeg()) == "image/jpeg" and sniff(png()) == "image/png"
    assert sniff(b"RIFF\0\0\0\0WAVEfmt ") is None and sniff(b"<svg") is None


def test_unresolvable_host_and_disallowed_hosts(connections: list[str]) -> None:
    err = run(refused(Fetcher(settings(), Resolver({})), "http://nowhere.test/a.jpg"))
    assert err.reason == "fetch_failed"
    err = run(refused(Fetcher(settings(url_hosts=(".example.com",)), Resolver({"img.test": ["8.8.8.8"]})),
                      "http://img.test/a.jpg"))
    assert err.reason == "reference_forbidden" and "FETCH_URL_HOSTS" in err.message
    err = run(refused(Fetcher(settings(url_hosts=()), Resolver({})), "https://img.example.com/a.jpg"))
    assert err.reason == "reference_forbidden"
    assert connections == []


def test_reasons_are_documented_client_errors() -> None:
    for reason in ("bad_reference", "reference_forbidden", "fetch_failed"):
        assert 400 <= REASONS[reason] < 500


# ---- S3 (the real local versitygw) -------------------------------------------------------------------------
@pytest.fixture
def s3_fetcher(s3: dict[str, str]) -> Iterator[Fetcher]:  # noqa: F811
    yield Fetcher(FetchSettings.from_env(s3 | {"FETCH_MAX_BYTES": "1000000"}))


def test_s3_object_is_fetched_with_etag(s3: dict[str, str], s3_fetcher: Fetcher) -> None:  # noqa: F811
    from demo.samples import skimage_photos

    photo = next(p for p in skimage_photos() if p.name == "astronaut.png")
    got = run(s3_fetcher.fetch(f"s3://{s3['FETCH_S3_BUCKETS']}/samples/astronaut.png"))
    assert got.data == photo.read_bytes() and got.content_type == "image/png"
    assert got.etag and got.echo()["size"] == photo.stat().st_size


def test_s3_refusals(s3: dict[str, str], s3_fetcher: Fetcher) -> None:  # noqa: F811
    bucket = s3["FETCH_S3_BUCKETS"]
    client = boto3.session.Session().client("s3", endpoint_url=s3["FETCH_S3_ENDPOINT_URL"], region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="tests/big.jpg", Body=IMAGE + b"\0" * 1_200_000)
    client.put_object(Bucket=bucket, Key="tests/text.jpg", Body=b"hello, not an image")
    cases = {f"s3://{bucket}/tests/big.jpg": ("too_large", False),
             f"s3://{bucket}/tests/text.jpg": ("not_an_image", False),
             f"s3://{bucket}/tests/missing.jpg": ("fetch_failed", False),
             "s3://some-other-bucket/samples/astronaut.png": ("reference_forbidden", False)}
    for ref, expected in cases.items():
        err = run(refused(s3_fetcher, ref))
        assert (err.reason, err.transient) == expected, ref


def test_s3_wrong_credentials_are_refused_without_leaking_them(s3: dict[str, str], tmp_path: Path,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIAWRONGKEY\naws_secret_access_key = s3cr3t-value\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    err = run(refused(Fetcher(FetchSettings.from_env(s3)), f"s3://{s3['FETCH_S3_BUCKETS']}/samples/astronaut.png"))
    assert err.reason == "fetch_failed" and "s3cr3t" not in err.message and "AKIAWRONGKEY" not in err.message


def test_s3_endpoint_down_is_transient(s3: dict[str, str]) -> None:  # noqa: F811
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fetcher = Fetcher(FetchSettings.from_env(s3 | {"FETCH_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                                                   "FETCH_CONNECT_TIMEOUT_S": "1"}))
    err = run(refused(fetcher, f"s3://{s3['FETCH_S3_BUCKETS']}/samples/astronaut.png"))
    assert err.reason == "fetch_failed" and err.transient


def test_s3_keys_are_signed_like_botocore_signs_them(s3: dict[str, str], s3_fetcher: Fetcher) -> None:  # noqa: F811
    """Each key is signed by botocore's SigV4 query signer on a prefix learnt once per bucket: the URL must be the
    one `generate_presigned_url` gives (but for its date and signature), and the real store must accept it."""
    from urllib.parse import parse_qs, urlsplit

    bucket = s3["FETCH_S3_BUCKETS"]
    client = boto3.session.Session().client("s3", endpoint_url=s3["FETCH_S3_ENDPOINT_URL"], region_name="us-east-1")
    keys = ["tests/plain.png", "tests/c+d~e/é,ß.png", "tests/q?x=1&y#frag.png", "tests//double/slash.png"]
    refs = []
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=png())
        ref = parse_reference(f"s3://{bucket}/{key}")
        assert ref.key == key
        mine, theirs = (urlsplit(u) for u in (s3_fetcher._presign(ref), s3_fetcher._client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60)))
        ours, botos = (parse_qs(u.query) for u in (mine, theirs))
        for q in (ours, botos):
            del q["X-Amz-Date"], q["X-Amz-Signature"], q["X-Amz-Expires"]
        assert (mine.netloc, mine.path, ours) == (theirs.netloc, theirs.path, botos), key
        refs.append(ref)

    async def fetch_all() -> list[bytes]:
        try:
            return [(await s3_fetcher.fetch(ref)).data for ref in refs]
        finally:
            await s3_fetcher.close()

    assert run(fetch_all()) == [png()] * len(keys)  # the store checked every signature
    assert list(s3_fetcher._object_urls) == [bucket]  # botocore's presigner ran once for the bucket


def _fetch_counting_thread_hops(fetcher: Fetcher, refs: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    hops: list[str] = []
    real = asyncio.to_thread

    async def counted(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", "?"))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)

    async def go() -> None:
        try:
            for ref in refs:
                assert (await fetcher.fetch(ref)).data
        finally:
            await fetcher.close()

    run(go())
    monkeypatch.setattr(asyncio, "to_thread", real)
    return hops.count("_presign")


def test_s3_signing_leaves_the_loop_only_when_credentials_may_need_the_network(
        s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Static credentials: only the first presign (which builds the client, resolving credentials) runs in a
    thread. Credentials due for a refresh (a credential_process whose keys expire in 12 min: botocore refreshes
    15 min ahead) are signed in a thread every time, and the refresh did run."""
    refs = [f"s3://{s3['FETCH_S3_BUCKETS']}/samples/astronaut.png"] * 3
    assert _fetch_counting_thread_hops(Fetcher(FetchSettings.from_env(s3)), refs, monkeypatch) == 1

    import configparser
    keys = configparser.ConfigParser()
    keys.read(s3["AWS_SHARED_CREDENTIALS_FILE"])
    runs = tmp_path / "runs"
    script = tmp_path / "creds.py"
    script.write_text(
        "import datetime, json, pathlib\n"
        f"pathlib.Path({str(runs)!r}).open('a').write('x')\n"
        "expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=12)\n"
        f"print(json.dumps({{'Version': 1, 'AccessKeyId': {keys['default']['aws_access_key_id']!r}, "
        f"'SecretAccessKey': {keys['default']['aws_secret_access_key']!r}, 'Expiration': expiry.isoformat()}}))\n")
    config = tmp_path / "config"
    config.write_text(f"[default]\ncredential_process = {sys.executable} {script}\n")
    empty = tmp_path / "credentials"
    empty.write_text("")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    settings = FetchSettings.from_env({k: v for k, v in s3.items() if k != "AWS_SHARED_CREDENTIALS_FILE"})
    assert _fetch_counting_thread_hops(Fetcher(settings), refs, monkeypatch) == 3
    assert len(runs.read_text()) >= 3  # the credential process ran for every refresh, off the loop


# ---- requests that carry references ------------------------------------------------------------------------
def test_v1_and_v2_requests_are_resolved_in_place(s3: dict[str, str], s3_fetcher: Fetcher,  # noqa: F811
                                                  connections: list[str]) -> None:
    bucket = s3["FETCH_S3_BUCKETS"]
    fetcher = Fetcher(replace(FetchSettings.from_env(s3), private_networks=(ipaddress.ip_network("127.0.0.1/32"),)),
                      Resolver({"img.test": ["127.0.0.1"]}))

    async def go() -> None:
        async with origin(image_routes) as (port, _):
            v1 = {"instances": [{"url": f"http://img.test:{port}/img.jpg"}, {"b64": "AAAA"},
                                {"s3": f"s3://{bucket}/samples/coffee.png"}]}
            out = await resolve_request(v1, fetcher)
            assert [sorted(i) for i in out["instances"]] == [["b64"]] * 3 and out["instances"][1]["b64"] == "AAAA"
            v2 = {"id": "r", "inputs": [{"name": "image_url", "datatype": "BYTES", "shape": [2],
                                         "data": [f"s3://{bucket}/samples/coffee.png",
                                                  f"http://img.test:{port}/img.jpg"]}]}
            out = await resolve_request(v2, fetcher)
            (tensor,) = out["inputs"]
            assert (tensor["name"], tensor["shape"], len(tensor["data"]), out["id"]) == ("image", [2], 2, "r")
            bad = {"instances": [{"url": f"http://img.test:{port}/img.jpg"}, {"url": "http://169.254.169.254/"},
                                 {"url": "ftp://x/"}]}
            with pytest.raises(ModerationError) as info:  # naming the first bad image
                await resolve_request(bad, fetcher)
            assert (info.value.reason, info.value.index, info.value.status) == ("reference_forbidden", 1, 403)
            await fetcher.close()

    run(go())
    assert references_in({"instances": [{"b64": "AAAA"}]}) is None
    assert references_in({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AA"]}]}) is None
    assert "169.254.169.254" not in connections


@pytest.mark.parametrize("url", ["http://2130706433/", "http://0x7f000001/", "http://017700000001/", "http://127.1/",
                                 "http://localhost/", "http://LOCALHOST/", "http://0/"])
def test_numeric_and_local_names_are_judged_by_what_they_resolve_to(url: str, connections: list[str]) -> None:
    """Decimal, hex and octal IPv4 spellings and /etc/hosts names go through the system resolver (no DNS traffic:
    inet_aton and the hosts file answer); its answers are what gets checked."""
    err = run(refused(Fetcher(settings(private_networks=())), url))
    assert err.reason == "reference_forbidden" and connections == []
