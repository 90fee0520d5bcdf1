"""/healthz, /readyz (with services cut through a TCP proxy) and /metrics."""

from __future__ import annotations

from unittest import mock

from aiohttp.test_utils import TestClient, make_mocked_request

from agora.config import Config
from agora.errors import AppError
from agora.server import keys
from agora.server.app import create_app
from agora.server.metrics import Metrics
from agora.server.ops import metrics, metrics_token_matches
from tests.support.api import register
from tests.support.events import require_amqp
from tests.support.proxy import proxy_postgres, proxy_redis
from tests.support.services import ServiceSet
from tests.support.ws import WsClient


async def test_healthz(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_readyz_ok(client: TestClient) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    checks = (await resp.json())["checks"]
    assert checks.pop("events") == {"status": "ok", "transport": "in-process", "unsent": 0}
    assert checks.pop("search") == {"status": "ok", "backend": "postgres"}
    assert checks == {"postgres": "ok", "redis": "ok"}


async def test_readyz_503_when_postgres_or_redis_is_cut(make_client, config: Config) -> None:  # type: ignore[no-untyped-def]
    assert config.database.url and config.redis.url
    pg_proxy, db_url = await proxy_postgres(config.database.url)
    redis_proxy, redis_url = await proxy_redis(config.redis.url)
    try:
        cut = config.with_overrides(
            database=config.database.__class__(url=db_url, pool_min=1, pool_max=2),
            redis=config.redis.__class__(url=redis_url, prefix=config.redis.prefix),
        )
        client = await make_client(create_app(cut))
        assert (await client.get("/readyz")).status == 200

        pg_proxy.cut()
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["checks"]["postgres"] == "unavailable"
        assert (await client.get("/healthz")).status == 200
        pg_proxy.restore()
        assert (await client.get("/readyz")).status == 200

        redis_proxy.cut()
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["checks"]["redis"] == "unavailable"
        redis_proxy.restore()
        await client.close()  # while both are reachable: the node deregisters itself
    finally:
        await pg_proxy.close()
        await redis_proxy.close()


async def test_readyz_503_when_the_configured_rabbitmq_is_down(make_client) -> None:  # type: ignore[no-untyped-def]
    down = await make_client(amqp_url="amqp://guest:guest@127.0.0.1:1/")  # nothing listens
    resp = await down.get("/readyz")
    assert resp.status == 503
    checks = (await resp.json())["checks"]
    # Events wait in the outbox until the broker is back (tests/test_events_faults.py).
    assert checks.pop("events")["status"] == "waiting"
    assert checks.pop("search")["status"] == "ok"
    assert checks == {"postgres": "ok", "redis": "ok", "rabbitmq": "unavailable"}


async def test_readyz_ok_with_a_reachable_rabbitmq(make_client, services: ServiceSet) -> None:  # type: ignore[no-untyped-def]
    url = require_amqp(services)
    up = await make_client(amqp_url=url)
    resp = await up.get("/readyz")
    assert resp.status == 200
    checks = (await resp.json())["checks"]
    assert checks.pop("events")["status"] == "ok"
    assert checks.pop("search")["status"] == "ok"
    assert checks == {"postgres": "ok", "redis": "ok", "rabbitmq": "ok"}


async def test_metrics_served_to_loopback(client: TestClient) -> None:
    await client.get("/healthz")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert "agora_http_requests_total" in text
    assert 'route="/healthz"' in text
    assert "agora_db_statement_duration_seconds" in text
    # Odd methods and invented paths add no label values (no client can grow the registry).
    for i, method in enumerate(["PROPFIND", "MKCOL", "LOCK", "PURGE", "REPORT"]):
        await client.request(method, f"/no/such/{i}")
        await client.get(f"/api/v1/nothing/{i}")
    text = await (await client.get("/metrics")).text()
    assert "PROPFIND" not in text and "/no/such" not in text and "nothing" not in text
    assert 'method="other",route="unmatched"' in text


async def test_websocket_frames_are_counted(client: TestClient) -> None:
    user = await register(client)
    ws = await WsClient.connect(client, user.access)  # ready: one frame out
    await ws.send({"type": "ping"})
    await ws.expect("pong")
    await ws.ws.send_str("not json")
    await ws.expect("error")
    await ws.close()
    text = await (await client.get("/metrics")).text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agora_ws_frames")
    }
    assert samples['agora_ws_frames_in_total{type="ping"}'] == 1
    assert samples['agora_ws_frames_in_total{type="invalid"}'] == 1
    assert samples["agora_ws_frames_out_total"] >= 3  # ready, pong, error


async def test_feed_page_cache_is_exported(client: TestClient) -> None:
    user = await register(client)
    for _ in range(3):  # one page built, then two served from memory
        assert (await client.get("/api/v1/feed", headers=user.headers)).status == 200
    text = await (await client.get("/metrics")).text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agora_feed_page_cache")
    }
    assert samples["agora_feed_page_cache_misses_total"] == 1
    assert samples["agora_feed_page_cache_hits_total"] == 2
    assert samples["agora_feed_page_cache_entries"] == 1
    assert samples["agora_feed_page_cache_bytes"] > 0


def _remote_request(remote: str, config: Config, auth: str | None = None):  # type: ignore[no-untyped-def]
    app = create_app(config)
    app[keys.METRICS] = Metrics()
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (remote, 40000) if name == "peername" else default
    )
    headers = {"Authorization": auth} if auth else {}
    return make_mocked_request("GET", "/metrics", headers=headers, app=app, transport=transport)


async def test_metrics_refused_elsewhere_without_token(config: Config) -> None:
    try:
        await metrics(_remote_request("203.0.113.9", config))
    except AppError as err:
        assert err.status == 403
    else:
        raise AssertionError("a remote caller without the token got metrics")
    with_token = config.with_overrides(metrics_token="s3cret")
    try:
        await metrics(_remote_request("203.0.113.9", with_token, "Bearer wrong"))
    except AppError as err:
        assert err.status == 403
    else:
        raise AssertionError("a wrong token got metrics")
    for odd in ("Basic czNjcmV0", "Bearer", "s3cret", "bearer s3cret2"):
        try:
            await metrics(_remote_request("203.0.113.9", with_token, odd))
        except AppError as err:
            assert err.status == 403
        else:
            raise AssertionError(f"{odd!r} got metrics")
    # Header bytes that are not UTF-8 arrive as surrogates (the mocked request cannot carry
    # them, so the comparison is checked on its own): refused, not a 500.
    assert not metrics_token_matches("Bearer \udcff", "s3cret")
    assert not metrics_token_matches("Bearer s3cret", None)
    assert metrics_token_matches("bearer  s3cret ", "s3cret")
    resp = await metrics(_remote_request("203.0.113.9", with_token, "Bearer s3cret"))
    assert resp.status == 200
