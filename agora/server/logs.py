"""Logging: JSON lines in production, readable lines elsewhere, a request id on every line.

The request id lives in a context variable set by the request middleware (and by the WebSocket
session for frames it handles), so every log call inside a request carries it without passing it.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import msgspec
from aiohttp.http_exceptions import HttpProcessingError

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class _ContextFilter(logging.Filter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.node_id = self.node_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers (Loki, ELK, CloudWatch) ingest as is."""

    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "node_id": getattr(record, "node_id", "-"),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in entry:
                entry[key] = (
                    value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
                )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._encoder.encode(entry).decode()


class _BadHttpFilter(logging.Filter):
    """aiohttp logs every request it cannot parse (a request line or header over 8 KiB, bytes
    that are not HTTP) as an error with a traceback: anyone can fill the log that way. Such a
    record becomes one warning line naming the problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            what = (str(exc.message).splitlines() or [type(exc).__name__])[0][:200]
            record.msg, record.args = "%s: %s", (record.getMessage(), what)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def quiet_bad_http() -> None:
    """Install the filter above on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadHttpFilter) for f in server_log.filters):
        server_log.addFilter(_BadHttpFilter())


READABLE = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"


def setup_logging(*, production: bool, level: str, node_id: str) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(node_id))
    handler.setFormatter(JsonFormatter() if production else logging.Formatter(READABLE))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log repeats what our middleware logs with the request id.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_bad_http()
