"""Whole nodes as processes: nothing configured (embedded services), SIGTERM drain, JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from agora.config import load_config
from bench.fixtures import create_accounts, run_prefix
from bench.services import Services
from tests.conftest import JWT_SECRET
from tests.support.api import PASSWORD
from tests.support.node import NodeProcess
from tests.support.services import ServiceSet

pytestmark = pytest.mark.slow


def _children_running(pattern: str, cwd: Path) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern in cmd and str(cwd) in cmd:
            found.append(int(pid))
    return found


async def _register_and_login(url: str, username: str) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{url}/api/v1/auth/register",
            json={"username": username, "email": f"{username}@example.test", "password": PASSWORD},
        )
        assert resp.status == 201, await resp.text()
        await _login(url, username)


async def _login(url: str, username: str) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{url}/api/v1/auth/login", json={"login": username, "password": PASSWORD}
        )
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["access_token"]
        me = await http.get(f"{url}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert (await me.json())["username"] == username


async def _search_works(url: str) -> None:
    """Search on the embedded PostgreSQL: stems, phrases and names within a typo (no pg_trgm
    there: the built-in trigrams of migration 0010)."""
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{url}/api/v1/auth/register",
            json={
                "username": "zephyrine_q",
                "email": "zephyrine@example.test",
                "password": PASSWORD,
                "display_name": "Zephyrine Quill",
            },
        )
        assert resp.status == 201, await resp.text()
        auth = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
        for text in ("the runner runs every morning", "good morning to you"):
            resp = await http.post(
                f"{url}/api/v1/posts", json={"text": text, "visibility": "public"}, headers=auth
            )
            assert resp.status == 201, await resp.text()

        async def found(q: str, kind: str = "posts") -> list[str]:
            resp = await http.get(
                f"{url}/api/v1/search", params={"q": q, "type": kind}, headers=auth
            )
            assert resp.status == 200, await resp.text()
            items = (await resp.json())["items"]
            return [i["post"]["text"] if kind == "posts" else i["user"]["username"] for i in items]

        assert await found("running") == ["the runner runs every morning"]
        assert await found('"good morning"') == ["good morning to you"]
        assert "zephyrine_q" in await found("zefyrine", "users")
        assert "zephyrine_q" in await found("zephyr", "users")


async def test_node_with_nothing_configured(tmp_path: Path) -> None:
    node = NodeProcess({}, tmp_path)
    took = node.start(ready_within=60)
    try:
        await _register_and_login(node.url, "embedded_user")
        await _search_works(node.url)
        log = node.log
        assert "PostgreSQL: embedded" in log and "Redis: embedded" in log
        assert "AGORA_JWT_SECRET is not set" in log
        # Outside production the log is for people: readable lines, each with the request id.
        assert not any(line.startswith("{") for line in log.splitlines())
        assert re.search(r" agora\.http \[[0-9a-f]{16}\] POST /api/v1/auth/register 201 ", log)
        assert (tmp_path / "var" / "postgres" / "PG_VERSION").exists()
        assert (tmp_path / "var" / "redis").is_dir()
        assert _children_running("redis-server", tmp_path)
        assert _children_running("postgres", tmp_path)
    finally:
        assert node.stop() == 0
    # Both engines stop with the node ...
    for _ in range(50):
        if not _children_running("redis-server", tmp_path) and not _children_running(
            "postgres -D", tmp_path
        ):
            break
        await asyncio.sleep(0.1)
    assert not _children_running("redis-server", tmp_path)
    assert not _children_running("postgres -D", tmp_path)
    # ... and a restarted node finds its data.
    again = NodeProcess({}, tmp_path, port=node.port)
    again.start(ready_within=60)
    try:
        await _login(again.url, "embedded_user")
    finally:
        assert again.stop() == 0
    assert took < 60


async def test_second_node_on_the_same_embedded_data_is_refused(tmp_path: Path) -> None:
    first = NodeProcess({}, tmp_path)
    first.start()
    try:
        second = NodeProcess({}, tmp_path)
        with pytest.raises(AssertionError, match="another Agora node"):
            second.start(ready_within=30)
    finally:
        assert first.stop() == 0


async def test_sigterm_drains_in_flight_requests(
    tmp_path: Path, services: ServiceSet, database_url: str, redis_prefix: str
) -> None:
    node = NodeProcess(
        {
            "AGORA_ENV": "production",
            "AGORA_JWT_SECRET": JWT_SECRET,
            "AGORA_DATABASE_URL": database_url,
            "AGORA_REDIS_URL": services.redis_url,
            "AGORA_REDIS_PREFIX": redis_prefix,
        },
        tmp_path,
    )
    node.start()
    assert node.proc is not None
    # Something that is not HTTP: aiohttp's parser refuses it; the log gets one warning line.
    bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", node.port)
    bad_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Evil: a\x00b\r\n\r\n")
    assert b" 400 " in await asyncio.wait_for(bad_reader.readline(), 5)
    bad_writer.close()
    body = json.dumps(
        {"username": "drained_user", "email": "drained@example.test", "password": PASSWORD}
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    # A request whose body is still arriving when SIGTERM lands.
    writer.write(
        b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nX-Request-ID: drain-test-1\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    sent_at = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    writer.write(body[10:])
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert b" 201 " in status_line, status_line
    writer.close()
    code = await asyncio.get_running_loop().run_in_executor(None, node.proc.wait, 15)
    assert code == 0
    assert time.monotonic() - sent_at < 10
    # New connections are refused once draining began.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", node.port)
    # Production logs are JSON lines, each with the request id.
    entries = [json.loads(line) for line in node.log.splitlines() if line.startswith("{")]
    assert entries and len(entries) == len([ln for ln in node.log.splitlines() if ln.strip()])
    register = [e for e in entries if e.get("route") == "/api/v1/auth/register"]
    assert register and register[0]["request_id"] == "drain-test-1" and register[0]["status"] == 201
    assert any("draining" in e["msg"] for e in entries)
    bad = [e for e in entries if e["logger"] == "aiohttp.server"]
    assert len(bad) == 1 and bad[0]["level"] == "warning" and "exc" not in bad[0], bad
    assert "Invalid header value char" in bad[0]["msg"], bad


async def test_sigterm_with_many_sessions_is_clean_and_prompt(
    tmp_path: Path, services: ServiceSet, database_url: str, redis_prefix: str
) -> None:
    """Every session gets 1001 and the node exits well inside the budget, with nothing logged
    as an error (aiohttp logs one for each handler still running when it gives up on them)."""
    node = NodeProcess(
        {
            "AGORA_JWT_SECRET": JWT_SECRET,
            "AGORA_DATABASE_URL": database_url,
            "AGORA_REDIS_URL": services.redis_url,
            "AGORA_REDIS_PREFIX": redis_prefix,
            "AGORA_WS_RATE_LIMIT": "0",
        },
        tmp_path,
    )
    node.start()
    assert node.proc is not None
    count = 6000  # users, one session each: each one's presence is cleaned up on the way out
    config = load_config({"AGORA_DATABASE_URL": database_url, "AGORA_JWT_SECRET": JWT_SECRET})
    accounts = await create_accounts(Services(config), run_prefix("shut"), count)
    codes: list[int | None] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = []
        for start in range(0, count, 250):
            batch = await asyncio.gather(
                *(
                    http.ws_connect(f"{node.url}/ws?token={account.token}")
                    for account in accounts[start : start + 250]
                )
            )
            for ws in batch:
                assert (await ws.receive_json())["type"] == "ready"
            sockets += batch

        async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for _ in ws:
                pass
            codes.append(ws.close_code)

        readers = [asyncio.create_task(until_closed(ws)) for ws in sockets]
        sent_at = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*readers), 15)
        code = await asyncio.get_running_loop().run_in_executor(None, node.proc.wait, 15)
    assert code == 0
    assert time.monotonic() - sent_at < 10
    assert codes.count(1001) == count, {c: codes.count(c) for c in set(codes)}
    assert " ERROR " not in node.log and "Traceback" not in node.log, node.log[-3000:]
