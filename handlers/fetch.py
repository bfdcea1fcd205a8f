"""Images by reference: fetch the image an `s3://bucket/key` or an `http(s)://` URL names, safely.

One fetcher for every front door that takes references (the Kafka bridge, the local gateway, the KServe runtime);
TorchServe's workers never fetch (a blocked worker would stall its whole server-side batch). Torch-free and
dependency-light (aiohttp, boto3) so the bridge image carries it.

A URL fetcher on a server is an SSRF hole unless proven otherwise, so for every hop (the URL and each redirect):
- only `http`/`https`, no user:password in the URL (`bad_reference`);
- the host is resolved ONCE by `resolver`; every answer must be a public address (IPv4-mapped/6to4/NAT64
  forms are judged by the IPv4 address inside); else `reference_forbidden` before any connection. The
  request then goes to that very address (`http://<ip>:<port>/...` with the `Host` header and, for https, the
  TLS server name and certificate check of the original host), so a DNS answer that changes later is never used;
- `FETCH_PRIVATE_NETWORKS` (empty by default) is the one explicit way to reach private addresses, e.g. an
  in-cluster object store; redirects are followed by hand, at most `FETCH_MAX_REDIRECTS`, each re-checked;
- connect/read/total timeouts; the byte cap is enforced while streaming (and from Content-Length first);
  no transparent decompression; the content type is sniffed from the bytes, never taken from headers. The
  decoder's pixel cap still applies afterwards (decompression bombs are refused there).

S3 references use boto3 with the standard AWS credential chain (environment, shared config/credentials files,
web identity tokens as IRSA mounts them, instance metadata) against `FETCH_S3_ENDPOINT_URL` (empty = AWS), an
operator-chosen endpoint, for the buckets of `FETCH_S3_BUCKETS` only. Credentials are never in a reference,
an error message or a log line; URL query strings (presigned signatures) are left out of messages too.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from handlers.env import optional_env
from handlers.envelopes import V1_REFERENCE_FIELDS, V2_INPUT_NAME, V2_URL_INPUT_NAME
from handlers.errors import ModerationError

# name -> (default, description): the bridge's DEFAULTS include these; the gateway and the KServe runtime read them
# the same way. Documented in README.md and bridge/README.md, mirrored in the chart's values.
FETCH_DEFAULTS: dict[str, tuple[str, str]] = {
    "FETCH_URL_HOSTS": ("*", "http(s) references: * = any host whose addresses are all public, a comma-separated "
                             "list of host names (.example.com = any subdomain) to allow only those, empty = "
                             "URL references refused"),
    "FETCH_S3_BUCKETS": ("", "buckets that s3:// references may read (comma-separated allow-list; empty = S3 "
                             "references refused)"),
    "FETCH_S3_ENDPOINT_URL": ("", "S3-compatible endpoint (MinIO, Ceph RGW, versitygw, GCS interop; path-style "
                                  "addressing); empty = AWS S3. Credentials: the standard AWS chain"),
    "FETCH_S3_REGION": ("", "S3 region (empty: the AWS chain's, else us-east-1)"),
    "FETCH_PRIVATE_NETWORKS": ("", "CIDRs that URL references may reach although not public (comma-separated, "
                                   "e.g. an in-cluster object store's Service range); empty = only public "
                                   "addresses. Never list the metadata range 169.254.0.0/16"),
    "FETCH_MAX_BYTES": ("20971520", "largest referenced image (bytes), enforced while streaming: 413 too_large"),
    "FETCH_CONNECT_TIMEOUT_S": ("3", "connect timeout of one fetch (seconds)"),
    "FETCH_READ_TIMEOUT_S": ("10", "longest wait for the next bytes of a fetch (seconds)"),
    "FETCH_TOTAL_TIMEOUT_S": ("30", "longest whole fetch, redirects included (seconds)"),
    "FETCH_MAX_REDIRECTS": ("3", "HTTP redirects followed per URL reference, each hop re-checked"),
    "FETCH_CONCURRENCY": ("8", "references fetched at once per process"),
}

REFERENCE_SCHEMES = ("s3", "http", "https")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
_PROBE_KEY = "presign-probe"  # a key presigned (never fetched) once per bucket: see Fetcher._presign
_MAX_REFERENCE_CHARS = 4096
# Magic numbers of the raster formats the decoder takes -> the content type sniffed from the first bytes.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"), (b"\x89PNG\r\n\x1a\n", 0, "image/png"), (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"), (b"WEBP", 8, "image/webp"), (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"), (b"MM\x00*", 0, "image/tiff"),
)

Resolver = Callable[[str, int], Awaitable[list[str]]]


class FetchError(ModerationError):
    """A reference that could not be turned into image bytes. `transient`: another try may work (timeouts,
    connection refused, the origin's 5xx/429, S3 throttling); the bridge retries those, the rest go to the DLQ."""

    def __init__(self, reason: str, message: str, transient: bool = False) -> None:
        super().__init__(reason, message)
        self.transient = transient


@dataclass(frozen=True)
class Reference:
    """A parsed reference: `s3` (bucket, key) or `http`/`https` (url)."""

    scheme: str
    url: str = ""
    bucket: str = ""
    key: str = ""

    @property
    def safe(self) -> str:
        """The reference as it may appear in logs, errors and predictions: no query string or fragment."""
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.key}"
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Fetched:
    """A fetched image and what to echo about it (ETag/version when the origin says)."""

    data: bytes
    content_type: str
    reference: Reference
    etag: str | None = None
    version_id: str | None = None

    def echo(self) -> dict[str, Any]:
        """`reference` of a prediction record (bridge/schema/image_predictions.schema.json)."""
        out: dict[str, Any] = {"ref": self.reference.safe, "size": len(self.data)}
        if self.etag:
            out["etag"] = self.etag
        if self.version_id:
            out["version_id"] = self.version_id
        return out


def parse_reference(value: Any) -> Reference:
    """`s3://bucket/key` or an http(s) URL -> Reference; anything else is `bad_reference` (400)."""
    if not isinstance(value, str) or not value or len(value) > _MAX_REFERENCE_CHARS:
        raise FetchError("bad_reference", f"a reference is a string of 1 to {_MAX_REFERENCE_CHARS} characters")
    if any(ord(c) < 0x21 or c == "\x7f" for c in value):
        raise FetchError("bad_reference", "a reference holds no spaces or control characters")
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in REFERENCE_SCHEMES:
        raise FetchError("bad_reference", f"unsupported reference scheme {scheme or '(none)'!r}: use s3://, "
                                          "https:// or http://")
    if scheme == "s3":
        bucket, _, key = value[5:].partition("/") if value[:5].lower() == "s3://" else ("", "", "")
        if not _BUCKET.match(bucket) or ".." in bucket or not key or len(key.encode()) > 1024:
            raise FetchError("bad_reference", "an S3 reference is s3://<bucket>/<key> (bucket: 3-63 of a-z 0-9 . -)")
        return Reference("s3", bucket=bucket, key=key)
    _check_url(value)
    return Reference(scheme, url=value)


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError("bad_reference", f"malformed URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError("bad_reference", f"unsupported URL scheme {parts.scheme!r}: only http and https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise FetchError("bad_reference", "credentials in a URL are refused (user:password@host)")
    if not parts.hostname:
        raise FetchError("bad_reference", "URL without a host")
    if port == 0:
        raise FetchError("bad_reference", "URL with port 0")


def sniff(data: bytes) -> str | None:
    """Content type from the first bytes (raster formats the decoder takes), None if not an image."""
    for magic, offset, ctype in _MAGIC:
        if data[offset:offset + len(magic)] == magic and (ctype != "image/webp" or data[:4] == b"RIFF"):
            return ctype
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    packed = ip.packed
    if packed[:12] == bytes(12) and packed[12:] != bytes(4) and ip != ipaddress.IPv6Address("::1"):
        return ipaddress.IPv4Address(packed[12:])  # deprecated IPv4-compatible ::a.b.c.d
    if ip in ipaddress.IPv6Network("64:ff9b::/96") or ip in ipaddress.IPv6Network("64:ff9b:1::/48"):
        return ipaddress.IPv4Address(packed[12:])
    return None


def refusal(address: str, private: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()) -> str | None:
    """Why `address` may not be fetched from (None: it may). Private addresses pass only inside `private`."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            why = refusal(str(inner), private)
            return None if why is None else f"{ip} embeds {inner}: {why}"
    if any(ip.version == net.version and ip in net for net in private):
        return None
    for flag, what in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"), ("is_link_local",
                       "link-local (cloud metadata lives here)"), ("is_multicast", "multicast"),
                       ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(ip, flag):
            return f"{ip} is a {what} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (one lookup)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class FetchSettings:
    url_hosts: tuple[str, ...] = ("*",)
    s3_buckets: frozenset[str] = frozenset()
    s3_endpoint_url: str = ""
    s3_region: str = ""
    private_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_bytes: int = 20 * 1024 * 1024
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 30.0
    max_redirects: int = 3
    concurrency: int = 8

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FetchSettings:
        def e(name: str) -> str:  # "" switches a setting off (FETCH_URL_HOSTS= refuses every URL)
            return optional_env(name, environ, FETCH_DEFAULTS).strip()

        def items(name: str) -> list[str]:
            return [x.strip() for x in e(name).split(",") if x.strip()]

        return cls(
            url_hosts=tuple(h.lower() for h in items("FETCH_URL_HOSTS")),
            s3_buckets=frozenset(items("FETCH_S3_BUCKETS")),
            s3_endpoint_url=e("FETCH_S3_ENDPOINT_URL"),
            s3_region=e("FETCH_S3_REGION"),
            private_networks=tuple(ipaddress.ip_network(n, strict=False) for n in items("FETCH_PRIVATE_NETWORKS")),
            max_bytes=int(e("FETCH_MAX_BYTES")),
            connect_timeout_s=float(e("FETCH_CONNECT_TIMEOUT_S")),
            read_timeout_s=float(e("FETCH_READ_TIMEOUT_S")),
            total_timeout_s=float(e("FETCH_TOTAL_TIMEOUT_S")),
            max_redirects=int(e("FETCH_MAX_REDIRECTS")),
            concurrency=max(1, int(e("FETCH_CONCURRENCY"))),
        )


@dataclass
class Fetcher:
    """Fetches references (see the module docstring for the rules). One per process; `close()` at the end.

    `resolver` is injectable (tests map made-up host names to the addresses they want to prove refused);
    `s3_client` likewise (default: boto3's client for the settings' endpoint, built on first use), and
    `ssl_context` (default: the system's CAs)."""

    settings: FetchSettings = field(default_factory=FetchSettings.from_env)
    resolver: Resolver = system_resolver
    s3_client: Any = None
    ssl_context: ssl.SSLContext | None = None
    _session: aiohttp.ClientSession | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slots: asyncio.Semaphore | None = None
    _boto: Any = None  # the boto3 session behind the default client: its credentials tell when signing may block
    _credentials: Any = None
    _object_urls: dict[str, tuple[str, str] | None] = field(default_factory=dict)  # bucket -> (URL prefix, region)

    async def fetch(self, reference: Reference | str) -> Fetched:
        ref = reference if isinstance(reference, Reference) else parse_reference(reference)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.concurrency)
        async with self._slots:
            if ref.scheme == "s3":
                data, etag, version = await self._s3(ref)
            else:
                data, etag, version = await self._url(ref)
        if not data:
            raise FetchError("empty", f"{ref.safe}: the referenced object is empty")
        ctype = sniff(data)
        if ctype is None:
            raise FetchError("not_an_image", f"{ref.safe}: the referenced bytes are not a raster image")
        return Fetched(data, ctype, ref, etag, version)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- http(s) ----------------------------------------------------------------------------------
    def _host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(h == "*" or host == h or (h.startswith(".") and host.endswith(h)) for h in self.settings.url_hosts)

    async def _pinned(self, url: str) -> tuple[str, str, str]:
        """(url with the host replaced by the one checked address, Host header value, TLS server name) of a
        hop: `bad_reference`/`reference_forbidden` before any connection."""
        _check_url(url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        if not self._host_allowed(host):
            raise FetchError("reference_forbidden", f"URL references to host {host!r} are not allowed "
                                                    "(FETCH_URL_HOSTS)")
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            addresses = [host]
        except ValueError:
            try:
                addresses = await asyncio.wait_for(self.resolver(host, port), self.settings.connect_timeout_s)
            except (OSError, TimeoutError) as exc:
                raise FetchError("fetch_failed", f"cannot resolve {host!r}: {exc or 'timeout'}", True) from None
        if not addresses:
            raise FetchError("fetch_failed", f"{host!r} resolves to no address", True)
        for address in addresses:  # every answer must pass: a mixed answer is how DNS rebinding starts
            why = refusal(address, self.settings.private_networks)
            if why is not None:
                where = "URL host" if addresses == [host] else f"{host!r} resolves to a forbidden address:"
                raise FetchError("reference_forbidden", f"{where} {why}")
        ip = ipaddress.ip_address(addresses[0].split("%", 1)[0])
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        pinned = urlunsplit((parts.scheme.lower(), f"{netloc}:{port}", parts.path or "/", parts.query, ""))
        default_port = port == (443 if parts.scheme.lower() == "https" else 80)
        host_header = host if default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if default_port else f"[{host}]:{port}"
        return pinned, host_header, host

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            s = self.settings
            timeout = aiohttp.ClientTimeout(total=s.total_timeout_s, sock_connect=s.connect_timeout_s,
                                            sock_read=s.read_timeout_s)
            # No cookies, no proxies from the environment, no transparent decompression (bombs, byte cap).
            self._session = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
                                                  auto_decompress=False, trust_env=False,
                                                  connector=aiohttp.TCPConnector(limit=s.concurrency * 2,
                                                                                 use_dns_cache=False))
        return self._session

    async def _url(self, ref: Reference) -> tuple[bytes, str | None, str | None]:
        try:
            return await asyncio.wait_for(self._follow(ref), self.settings.total_timeout_s)
        except TimeoutError:
            raise FetchError("fetch_failed", f"{ref.safe}: no complete answer within "
                                             f"{self.settings.total_timeout_s:g} s", True) from None

    async def _follow(self, ref: Reference) -> tuple[bytes, str | None, str | None]:
        url = ref.url
        for _hop in range(self.settings.max_redirects + 1):
            pinned, host_header, server_name = await self._pinned(url)
            https = url.lower().startswith("https:")
            try:
                async with self._http().get(
                    URL(pinned, encoded=True),  # the path exactly as the reference wrote it
                    allow_redirects=False, headers={"Host": host_header, "Accept": "image/*",
                                                    "Accept-Encoding": "identity"},
                    server_hostname=server_name if https else None,
                    ssl=(self.ssl_context or True) if https else True,
                ) as resp:
                    if resp.status in _REDIRECTS:
                        location = resp.headers.get("Location")
                        if not location:
                            raise FetchError("fetch_failed", f"{ref.safe}: redirect without a Location")
                        url = urljoin(url, location)
                        continue
                    if resp.status != 200:
                        transient = resp.status >= 500 or resp.status in (408, 429)
                        raise FetchError("fetch_failed", f"{ref.safe}: the origin answered HTTP {resp.status}",
                                         transient)
                    return await self._read_capped(resp, ref), resp.headers.get("ETag"), None
            except aiohttp.ClientConnectorError as exc:
                raise FetchError("fetch_failed", f"{ref.safe}: cannot connect: {exc.strerror or exc}", True) \
                    from None
            except (aiohttp.ServerTimeoutError, TimeoutError):
                raise FetchError("fetch_failed", f"{ref.safe}: timed out", True) from None
            except aiohttp.ClientError as exc:
                raise FetchError("fetch_failed", f"{ref.safe}: {type(exc).__name__}", True) from None
        raise FetchError("fetch_failed", f"{ref.safe}: more than {self.settings.max_redirects} redirects "
                                         "(FETCH_MAX_REDIRECTS)")

    async def _read_capped(self, resp: aiohttp.ClientResponse, ref: Reference) -> bytes:
        cap = self.settings.max_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise FetchError("too_large", f"{ref.safe}: {resp.content_length} bytes, over the cap of {cap} "
                                          "(FETCH_MAX_BYTES)")
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > cap:  # stop reading at once: the rest is never downloaded
                resp.close()
                raise FetchError("too_large", f"{ref.safe}: over the cap of {cap} bytes (FETCH_MAX_BYTES)")
            chunks.append(chunk)
        return b"".join(chunks)

    # ---- S3 ---------------------------------------------------------------------------------------
    def _client(self) -> Any:
        with self._lock:
            if self.s3_client is None:
                import boto3

                self._boto = boto3.session.Session()
                self.s3_client = s3_client(self.settings, self._boto)
            return self.s3_client

    def _signs_without_blocking(self) -> bool:
        """Can the next presign run on the event loop? Yes once the client exists and its credentials are static or
        not due for a refresh (botocore refreshes 15 min before expiry, over the network: STS, IMDS, a container
        endpoint). A thread hop per reference cost the loop as much in wake-ups and future callbacks as signing
        (profiled on a saturated bridge), and signing is CPU only once the credentials are at hand."""
        creds = self._credentials
        return creds is not None and not (hasattr(creds, "refresh_needed") and creds.refresh_needed())

    def _presign(self, ref: Reference) -> str:
        """A short-lived presigned GET of the object: boto3 resolves the credentials (standard chain, refreshed as
        needed) and signs; the bytes then stream over the fetcher's own async client, with the byte cap, instead of
        through botocore in a thread (thread hand-offs under the GIL made a busy bridge fetch 5x slower).

        `generate_presigned_url` costs ~0.37 ms of CPU a call, most of it endpoint-rule resolution that gives the
        same answer for every key of a bucket. So it runs once per bucket, for a probe key (which yields the
        objects' URL prefix, path-style or virtual-host as botocore decides, and the signing region), and each key
        is then signed by botocore's own SigV4 query signer: 0.16 ms (`python -m loadtest.bridge_costs`)."""
        client = self._client()
        expires = max(60, int(self.settings.total_timeout_s) * 2)
        if self._credentials is None and self._boto is not None:
            self._credentials = self._boto.get_credentials()  # the object the client signs with (resolved above)
        if ref.bucket not in self._object_urls:
            probe = urlsplit(client.generate_presigned_url("get_object", ExpiresIn=expires,
                                                           Params={"Bucket": ref.bucket, "Key": _PROBE_KEY}))
            region = parse_qs(probe.query).get("X-Amz-Credential", ["////"])[0].split("/")[2]
            path = urlunsplit((probe.scheme, probe.netloc, probe.path, "", ""))
            self._object_urls[ref.bucket] = (path[: -len(_PROBE_KEY)], region) \
                if path.endswith("/" + _PROBE_KEY) and region else None
        found = self._object_urls[ref.bucket]
        if found is None or self._credentials is None:  # an injected client, or a URL shape not understood
            return str(client.generate_presigned_url("get_object", Params={"Bucket": ref.bucket, "Key": ref.key},
                                                     ExpiresIn=expires))
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.utils import percent_encode

        prefix, region = found
        request = AWSRequest(method="GET", url=prefix + percent_encode(ref.key, safe="/~"))
        S3SigV4QueryAuth(self._credentials.get_frozen_credentials(), "s3", region, expires=expires).add_auth(request)
        return str(request.prepare().url)

    async def _s3(self, ref: Reference) -> tuple[bytes, str | None, str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        if ref.bucket not in self.settings.s3_buckets:
            raise FetchError("reference_forbidden", f"bucket {ref.bucket!r} is not in the allow-list "
                                                    "(FETCH_S3_BUCKETS)")
        try:
            if self._signs_without_blocking():
                url = self._presign(ref)
            else:  # first use or a credential refresh (STS, IMDS): network calls, not on the loop
                url = await asyncio.to_thread(self._presign, ref)
        except (BotoCoreError, ClientError) as exc:  # no credentials, bad configuration
            raise FetchError("fetch_failed", f"{ref.safe}: {type(exc).__name__}", True) from None
        try:
            async with asyncio.timeout(self.settings.total_timeout_s), self._http().get(
                URL(url, encoded=True), allow_redirects=False, headers={"Accept-Encoding": "identity"},
            ) as resp:
                if resp.status != 200:
                    body = await resp.content.read(4096)
                    found = re.search(rb"<Code>([A-Za-z]+)</Code>", body)
                    code = found.group(1).decode() if found else f"HTTP {resp.status}"
                    transient = resp.status >= 500 or resp.status == 429 or code in ("SlowDown", "RequestTimeout")
                    raise FetchError("fetch_failed", f"{ref.safe}: S3 answered {code}", transient)
                data = await self._read_capped(resp, ref)
                return data, resp.headers.get("ETag"), resp.headers.get("x-amz-version-id")
        except aiohttp.ClientConnectorError:
            raise FetchError("fetch_failed", f"{ref.safe}: cannot connect to the S3 endpoint", True) from None
        except (aiohttp.ServerTimeoutError, TimeoutError):
            raise FetchError("fetch_failed", f"{ref.safe}: S3 timed out", True) from None
        except aiohttp.ClientError as exc:
            raise FetchError("fetch_failed", f"{ref.safe}: {type(exc).__name__}", True) from None


def s3_client(settings: FetchSettings, session: Any = None) -> Any:
    """boto3's S3 client for the settings' endpoint: the standard credential chain (environment, shared files,
    web identity/IRSA, instance metadata), path-style addressing for S3-compatible endpoints, bounded timeouts."""
    import boto3  # only processes that see S3 references pay for it
    from botocore.config import Config

    config = Config(connect_timeout=settings.connect_timeout_s, read_timeout=settings.read_timeout_s,
                    signature_version="s3v4",  # presigned URLs too (SigV2 is refused by current S3 servers)
                    retries={"max_attempts": 2, "mode": "standard"},
                    s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
                    max_pool_connections=settings.concurrency * 2)
    return (session or boto3.session.Session()).client("s3", endpoint_url=settings.s3_endpoint_url or None,
                                                       region_name=settings.s3_region or None, config=config)


# ---- requests that carry references (KServe v1 / OIP v2 JSON) ----------------------------------------------


def may_hold_references(body: bytes) -> bool:
    """Cheap pre-check of a JSON body (a byte search: a 40 MB base64 request is not parsed twice for nothing)."""
    return any(marker in body for marker in (b'"url"', b'"s3"', b'"image_url"'))


def references_in(doc: Any) -> list[tuple[int, str]] | None:
    """(image index, reference) of a v1/v2 JSON request that names images by reference, None if it has none.
    v1: instances `{"url": ...}` / `{"s3": ...}` (other instances keep their bytes); v2: a BYTES input named
    `image_url` whose elements are reference strings."""
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("instances"), list):
        found = []
        for i, inst in enumerate(doc["instances"]):
            if isinstance(inst, dict):
                fields = [f for f in V1_REFERENCE_FIELDS if f in inst]
                if len(fields) > 1 or (fields and ("b64" in inst or "data" in inst)):
                    raise ModerationError("malformed_request", f"instance {i}: one of b64, data, url, s3", i)
                if fields:
                    found.append((i, inst[fields[0]]))
        return found or None
    if isinstance(doc.get("inputs"), list):
        tensors = [t for t in doc["inputs"] if isinstance(t, dict) and t.get("name") == V2_URL_INPUT_NAME]
        if not tensors:
            return None
        if len(doc["inputs"]) != 1:
            raise ModerationError("malformed_request", f'"{V2_URL_INPUT_NAME}" must be the only input')
        data = tensors[0].get("data")
        if tensors[0].get("datatype") != "BYTES" or not isinstance(data, list):
            raise ModerationError("malformed_request", f'"{V2_URL_INPUT_NAME}" is a BYTES input with a data list')
        if data and isinstance(data[0], list):
            data = [x for row in data for x in row]
        return list(enumerate(data))
    return None


async def resolve_request(doc: dict[str, Any], fetcher: Fetcher) -> dict[str, Any]:
    """The same request with every reference replaced by the fetched image as base64, fetched concurrently.
    The first failing reference (lowest index) fails the request with its index, like a bad image does."""
    refs = references_in(doc)
    if refs is None:
        return doc
    results = await asyncio.gather(*(fetcher.fetch(ref) for _i, ref in refs), return_exceptions=True)
    for (i, _ref), result in zip(refs, results, strict=True):
        if isinstance(result, ModerationError):
            raise result.at(i) from None
        if isinstance(result, BaseException):
            raise result
    b64 = {i: base64.b64encode(r.data).decode() for (i, _), r in zip(refs, results, strict=True)}  # type: ignore[union-attr]
    if "instances" in doc:
        instances = [{"b64": b64[i]} if i in b64 else inst for i, inst in enumerate(doc["instances"])]
        return {**doc, "instances": instances}
    tensor = next(t for t in doc["inputs"] if t.get("name") == V2_URL_INPUT_NAME)
    data = [b64[i] for i in range(len(refs))]
    inputs = [{**tensor, "name": V2_INPUT_NAME, "shape": [len(data)], "data": data}]
    return {**doc, "inputs": inputs}
