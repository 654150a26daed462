"""The one image-URL fetcher (the library's allow_urls, the folder job's --allow-urls, the service):
no SSRF, public http(s) addresses only.

Every hop (the URL and each redirect) is checked before any connection is made: the scheme must
be http or https, the host is resolved, and every address it resolves to must be public
(`ipaddress`'s is_global, also after unwrapping IPv4-mapped, 6to4, Teredo and NAT64 IPv6 forms);
loopback, private, link-local (169.254.169.254, the cloud metadata endpoint), CGNAT, multicast
and reserved ranges are refused. The connection then goes to the checked address itself, so a
second DNS answer cannot swap in a private one (DNS rebinding). Bodies are size- and time-capped;
redirects are followed by hand, at most `MAX_REDIRECTS`, each re-checked. Proxies from the
environment are not used.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

from .errors import ImageTooLargeError, UnreadableImageError

MAX_REDIRECTS = 3
DEFAULT_TIMEOUT_S = 10.0  # the library's and the folder job's; the server has its own settings
DEFAULT_MAX_BYTES = 50_000_000
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
Connector = Callable[[str, int, float], socket.socket]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def connect(ip: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((ip, port), timeout=timeout)


def embedded_ipv4(addr: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64), if any."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def is_public(addr: Address) -> bool:
    """True for globally routable unicast addresses, judged for any IPv4 address inside too."""
    inner = embedded_ipv4(addr)
    if inner is not None:
        if not is_public(inner):
            return False
        if addr.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d, whatever the Python version says
            return True
    return addr.is_global and not (addr.is_multicast or addr.is_reserved or addr.is_unspecified)


class UrlRefused(UnreadableImageError):
    """A URL that is not fetched (scheme, address, too many redirects)."""


@dataclass
class UrlFetcher:
    """Fetch one URL's body under the rules above. resolver, connector and allow_ip are replaceable
    for tests, which must never send traffic beyond the loopback interface."""

    max_bytes: int
    timeout_s: float
    resolver: Resolver = resolve_host
    connector: Connector = connect
    allow_ip: Callable[[Address], bool] = is_public
    ssl_context: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    def fetch(self, url: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            parts, ip = self._check(url, current)
            status, location, body = self._get(url, parts, ip, deadline)
            if status in (301, 302, 303, 307, 308):
                if not location:
                    raise UnreadableImageError(url, f"redirect {status} without a Location")
                current = urllib.parse.urljoin(current, location)
                continue
            if status != 200:
                raise UnreadableImageError(url, f"fetch failed: HTTP {status}")
            return body
        raise UrlRefused(url, f"more than {MAX_REDIRECTS} redirects")

    def _check(self, url: str, current: str) -> tuple[urllib.parse.SplitResult, str]:
        """Refuse the hop, or return it with the one checked address to connect to."""
        parts = urllib.parse.urlsplit(current)
        hop = "" if current == url else f" (redirected to {current})"
        if parts.scheme not in ("http", "https"):
            raise UrlRefused(url, f"only http and https URLs are fetched{hop}")
        try:
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:  # a port that is not a number
            raise UrlRefused(url, f"invalid URL{hop}: {e}") from e
        if not host:
            raise UrlRefused(url, f"URL has no host{hop}")
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
        except (OSError, ValueError, UnicodeError) as e:
            raise UnreadableImageError(url, f"cannot resolve {host}{hop}: {e}") from e
        if not addresses:
            raise UnreadableImageError(url, f"cannot resolve {host}{hop}")
        refused = [str(a) for a in addresses if not self.allow_ip(a)]
        if refused:  # all must pass: a client may connect to any of them
            raise UrlRefused(url, f"refused: {host} resolves to non-public address {', '.join(refused)}{hop}")
        return parts, str(addresses[0])

    def _get(self, url: str, parts: urllib.parse.SplitResult, ip: str, deadline: float):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UnreadableImageError(url, f"fetch took longer than {self.timeout_s:g} s")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        conn = _PinnedConnection(parts, ip, port, remaining, self.connector,
                                 self.ssl_context if parts.scheme == "https" else None)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            conn.request("GET", target, headers={"User-Agent": "blipcap", "Accept": "image/*"})
            sock = conn.sock  # the response reads from it after the connection lets go of it
            response = conn.getresponse()
            if response.status != 200:
                return response.status, response.getheader("Location"), b""
            length = response.getheader("Content-Length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                raise ImageTooLargeError(url, f"{int(length):,} bytes exceeds the {self.max_bytes:,}-byte URL cap")
            chunks, total = [], 0
            while chunk := response.read1(1 << 16):  # one recv at a time, so the deadline holds
                total += len(chunk)
                if total > self.max_bytes:
                    raise ImageTooLargeError(url, f"body exceeds the {self.max_bytes:,}-byte URL cap")
                if time.monotonic() > deadline:
                    raise UnreadableImageError(url, f"fetch took longer than {self.timeout_s:g} s")
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunks.append(chunk)
            return 200, None, b"".join(chunks)
        except (ImageTooLargeError, UnreadableImageError):
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise UnreadableImageError(url, f"fetch failed: {e}") from e
        finally:
            conn.close()


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to the checked address, with the URL's host in the Host header and TLS SNI/cert check."""

    def __init__(self, parts, ip: str, port: int, timeout: float, connector: Connector, context):
        super().__init__(parts.hostname, port, timeout=timeout)
        self._ip, self._connector, self._context = ip, connector, context

    def connect(self) -> None:
        sock = self._connector(self._ip, self.port, self.timeout)
        if self._context is not None:
            sock = self._context.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock
