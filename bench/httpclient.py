"""The smallest HTTP/1.1 client the load needs: prebuilt GET requests, a response parser.

The load generator shares 2 cores with the server, so every microsecond it spends per request is
taken from the thing being measured. aiohttp's client costs several times more per request than
writing prebuilt bytes and finding ``\\r\\n\\r\\n`` + ``Content-Length`` (see bench/README.md for
the measurement), so the hot path uses this. Only what Agora and the baselines send is handled:
``Content-Length``-framed responses on keep-alive connections, one request in flight per
connection. Anything else is a protocol error, counted, never guessed at.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
_CONTENT_LENGTH = b"\r\ncontent-length:"
_NO_BODY = frozenset({204, 304})


class ProtocolError(Exception):
    """The server answered something this client does not parse."""


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host:port/base`` -> ``(host, port, "/base")``, the base without a final ``/``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host:port URLs are supported, got {url!r}")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


def build_get(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one keep-alive GET request."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: application/json"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, int]:
    """Status and body length from a response head (status line and headers, no blank line)."""
    if not head.startswith(b"HTTP/1.") or len(head) < 12:
        raise ProtocolError(f"not an HTTP/1.x status line: {head[:40]!r}")
    try:
        status = int(head[9:12])
    except ValueError:
        raise ProtocolError(f"bad status line: {head[:40]!r}") from None
    lower = head.lower()
    at = lower.find(_CONTENT_LENGTH)
    if at < 0:
        if status in _NO_BODY or status < 200:
            return status, 0
        raise ProtocolError(f"HTTP {status} without Content-Length (chunked?) is not supported")
    start = at + len(_CONTENT_LENGTH)
    end = lower.find(b"\r", start)
    try:
        return status, int(head[start : end if end >= 0 else len(head)])
    except ValueError:
        raise ProtocolError("bad Content-Length") from None


class ResponseParser:
    """Incremental parser for one response at a time on a keep-alive connection."""

    __slots__ = ("_buf", "_need", "_status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = -1  # total bytes of the current response, once its head is in
        self._status = 0

    def feed(self, data: bytes) -> tuple[int, int] | None:
        """Add received bytes; return ``(status, response bytes)`` once the response is whole."""
        buf = self._buf
        buf += data
        if self._need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ProtocolError("response head over 64 KiB")
                return None
            self._status, length = _parse_head(bytes(buf[:end]))
            self._need = end + 4 + length
        if len(buf) < self._need:
            return None
        if len(buf) > self._need:
            raise ProtocolError("bytes after the response, but no request was pipelined")
        size, self._need = self._need, -1
        buf.clear()
        return self._status, size
