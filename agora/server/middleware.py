"""The request middleware: request id, timing, and the one error envelope.

Whatever goes wrong inside a request (an ``AppError``, aiohttp's own 404/405/413, a bug) leaves
as the contract's JSON envelope, never HTML or a stack trace, and carries the request id.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from agora.errors import AppError, ErrorCode
from agora.protocol.codec import encode
from agora.protocol.common import ErrorBody, ErrorDetail
from agora.server import keys
from agora.server.logs import request_id_var

log = logging.getLogger("agora.http")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES: dict[int, tuple[ErrorCode, str]] = {
    404: (ErrorCode.NOT_FOUND, "no such endpoint"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "this endpoint does not accept that method"),
    413: (ErrorCode.PAYLOAD_TOO_LARGE, "the request body is too large"),
    415: (ErrorCode.UNSUPPORTED_MEDIA_TYPE, "unsupported content type"),
}


class InFlight:
    """Counts HTTP requests being handled (not WebSocket sessions), so shutdown can wait for them.

    aiohttp's own graceful shutdown stops reading from connections first, which loses a request
    whose body is still arriving; the runner instead stops listening, waits here, then cleans up.
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


def error_response(err: AppError) -> web.Response:
    detail = ErrorDetail(code=err.code.value, message=err.message, fields=err.fields)
    return web.Response(
        body=encode(ErrorBody(error=detail)),
        status=err.status,
        content_type="application/json",
        headers=err.headers,
    )


def _from_http_exception(exc: web.HTTPException) -> AppError:
    code, message = _HTTP_CODES.get(exc.status, (None, None))
    if code is None:
        code = ErrorCode.INTERNAL_ERROR if exc.status >= 500 else ErrorCode.VALIDATION_ERROR
        message = exc.reason
    if exc.status == 413:
        limit = exc.text.split()[-1] if exc.text else ""
        message = (
            f"the request body is too large (limit {limit} bytes)" if limit.isdigit() else message
        )
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return AppError(code, message or exc.reason, status=exc.status, headers=headers)


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource
    return resource.canonical if resource is not None else "unmatched"


# Request ids: a random per-process prefix and a counter, unique across nodes and cheap.
_ID_PREFIX = secrets.token_hex(4)
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):08x}"


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get(REQUEST_ID_HEADER)
    request_id = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else new_request_id()
    request[REQUEST_ID_KEY] = request_id
    token = request_id_var.set(request_id)
    metrics = request.app[keys.METRICS]
    in_flight = request.app[keys.IN_FLIGHT]
    route = _route_name(request)
    start = time.perf_counter()
    counted = request.headers.get("Upgrade", "").lower() != "websocket"
    if counted:
        in_flight.enter()
        metrics.http_in_flight.inc()
    status = 500
    try:
        try:
            response = await handler(request)
        except AppError as err:
            response = error_response(err)
        except web.HTTPException as exc:
            if exc.status < 400:  # redirects and the like pass through
                raise
            response = error_response(_from_http_exception(exc))
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = error_response(
                AppError(ErrorCode.INTERNAL_ERROR, f"internal error (request id {request_id})")
            )
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - start
        if counted:
            in_flight.leave()
            metrics.http_in_flight.dec()
        metrics.observe_http(request.method, route, status, elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %d %.1fms",
                request.method,
                request.path,
                status,
                elapsed * 1000,
                extra={"status": status, "route": route},
            )
        request_id_var.reset(token)


def name_response(request: web.Request, response: web.StreamResponse) -> None:
    """For responses prepared inside a handler (WebSocket upgrades): call before ``prepare``."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
