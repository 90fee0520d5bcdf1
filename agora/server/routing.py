"""Typed REST endpoints.

A handler module declares its endpoints on a :class:`Routes` table with the msgspec types of the
body, query and response; :func:`mount` registers them. The same declarations feed the OpenAPI
document, so what validates a request is what documents it.

A handler receives one :class:`Call` (the parsed body and query, the caller, the app) and returns
a response struct, a :class:`Reply` (another status), or ``None`` (204).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from aiohttp import web

from agora.errors import AppError, ErrorCode, not_found, unauthorized
from agora.protocol.codec import convert_query, decode_body, encode
from agora.server import keys
from agora.server.clientip import client_address
from agora.services.accounts import Viewer
from agora.services.ratelimit import Hit

AuthMode = Literal["required", "optional", "none"]
B = TypeVar("B")
Q = TypeVar("Q")

JSON = "application/json"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
_ID = re.compile(r"[0-9]{1,19}")


@dataclass(slots=True)
class Reply:
    """A response with a status other than the endpoint's default."""

    status: int
    body: Any = None
    headers: dict[str, str] | None = None


class Call(Generic[B, Q]):
    """What a handler gets: the request, the validated body and query, and the caller."""

    __slots__ = ("_viewer", "body", "query", "request")

    def __init__(self, request: web.Request, body: B, query: Q, viewer: Viewer | None) -> None:
        self.request = request
        self.body = body
        self.query = query
        self._viewer = viewer

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def viewer(self) -> Viewer:
        """The authenticated caller (only on endpoints with ``auth="required"``)."""
        if self._viewer is None:
            raise unauthorized()
        return self._viewer

    @property
    def viewer_id(self) -> int | None:
        """The caller's user id on ``auth="optional"`` endpoints (None: anonymous)."""
        return self._viewer.user_id if self._viewer else None

    def path_id(self, name: str = "id", what: str = "resource") -> int:
        """A numeric id from the path; anything else names nothing, so it answers 404."""
        raw = self.request.match_info.get(name, "")
        if not _ID.fullmatch(raw):
            raise not_found(what)
        value = int(raw)
        if value > 2**63 - 1:
            raise not_found(what)
        return value

    @property
    def user_agent(self) -> str:
        return self.request.headers.get("User-Agent", "")


Handler = Callable[[Call[Any, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type | None = None
    query: type | None = None
    response: type | None = None
    status: int = 200
    auth: AuthMode = "required"
    also: tuple[tuple[int, type | None, str], ...] = ()  # other successful answers
    errors: tuple[int, ...] = ()  # error statuses beyond those its shape implies (openapi.py)
    limits: tuple[str, ...] = ()  # rate-limit rules counted beside the API's own (config.py)

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


@dataclass
class Routes:
    tag: str
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        body: type | None = None,
        query: type | None = None,
        response: type | None = None,
        status: int = 200,
        auth: AuthMode = "required",
        summary: str | None = None,
        also: tuple[tuple[int, type | None, str], ...] = (),
        errors: tuple[int, ...] = (),
        limits: tuple[str, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            doc = (handler.__doc__ or "").strip()
            self.endpoints.append(
                Endpoint(
                    method=method,
                    path=path,
                    handler=handler,
                    summary=summary or (doc.splitlines()[0] if doc else handler.__name__),
                    tag=self.tag,
                    body=body,
                    query=query,
                    response=response,
                    status=status,
                    auth=auth,
                    also=also,
                    errors=errors,
                    limits=limits,
                )
            )
            return handler

        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)


def bearer_token(request: web.Request) -> str | None:
    return parse_bearer(request.headers.get("Authorization"))


def parse_bearer(header: str | None) -> str | None:
    """The token of ``Bearer <token>`` (None when there is no header; 401 when malformed)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("the Authorization header must be 'Bearer <access_token>'")
    return token.strip()


def authenticate(request: web.Request, mode: AuthMode) -> Viewer | None:
    if mode == "none":
        return None
    token = bearer_token(request)
    if token is None:
        if mode == "required":
            raise unauthorized()
        return None
    viewer = request.app[keys.ACCOUNTS].authenticate(token)
    request.app[keys.ACTIVITY].seen(viewer.user_id)  # analytics: no I/O (services/activity.py)
    return viewer


RATE_HEADERS = web.RequestKey("rate_headers", dict)


async def rate_limit(
    request: web.Request, viewer: Viewer | None, names: tuple[str, ...] = ()
) -> None:
    """Count the request against the API's limit (per account, or per address without a token)
    and the endpoint's own rules, all or none; 429 when one of them is spent. The tightest
    bucket's ``X-RateLimit-*`` headers go on the response, whatever it turns out to be."""
    limiter = request.app[keys.LIMITER]
    if not limiter.enabled:
        return
    limits = request.app[keys.CONFIG].limits
    account = str(viewer.user_id) if viewer is not None else None
    hits = [
        Hit(limits["api"], account)
        if account is not None
        else Hit(limits["api_anonymous"], client_address(request))
    ]
    for name in names:
        rule = limits[name]
        if rule.per == "account" and account is not None:
            hits.append(Hit(rule, account))
        elif rule.per == "address":
            hits.append(Hit(rule, client_address(request)))
    verdict = await limiter.take(hits)  # at once, without I/O, most of the time
    request[RATE_HEADERS] = verdict.headers()
    if not verdict.allowed:
        raise verdict.error()


async def read_json_body(request: web.Request) -> bytes:
    ctype = request.content_type
    if request.body_exists and ctype != JSON and not ctype.endswith("+json"):
        raise AppError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"send the body as {JSON}, not {ctype or 'no content type'}",
        )
    return await request.read()


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=encode(body), status=status, content_type=JSON, headers=headers)


def _wrap(ep: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        viewer = authenticate(request, ep.auth)
        await rate_limit(request, viewer, ep.limits)
        body = decode_body(ep.body, await read_json_body(request)) if ep.body else None
        query = convert_query(ep.query, request.query) if ep.query else None
        result = await ep.handler(Call(request, body, query, viewer))
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, Reply):
            if result.body is None:
                return web.Response(status=result.status, headers=result.headers)
            return json_response(result.body, result.status, result.headers)
        if result is None:
            return web.Response(status=204)
        return json_response(result, ep.status, request.get(RATE_HEADERS))

    handle.__name__ = ep.handler.__name__
    return handle


def mount(app: web.Application, prefix: str, tables: list[Routes]) -> list[Endpoint]:
    mounted: list[Endpoint] = []
    for table in tables:
        for ep in table.endpoints:
            app.router.add_route(ep.method, prefix + ep.path, _wrap(ep), name=None)
            mounted.append(Endpoint(**{**ep.__dict__, "path": prefix + ep.path}))
    return mounted
