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
