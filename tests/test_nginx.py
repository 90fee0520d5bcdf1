"""deploy/nginx.conf for real: Debian's nginx in front of two node processes sharing the test
database and a Redis prefix. `nginx -t` on the shipped config, headers and limits, chat across
nodes with no sticky sessions, a SIGTERM-drained node whose clients move to the other one and
lose nothing, and REST answering 200 all through a node's restart.

nginx is installed (`apt-get install nginx`) when missing; without it these skip, except with
AGORA_TEST_NGINX_REQUIRED=1 (.ci/run), where they fail.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.conftest import JWT_SECRET
from tests.support.api import PASSWORD, User, unique
from tests.support.nginx import Nginx, ensure_nginx
from tests.support.node import NodeProcess, free_port
from tests.support.services import ServiceSet
from tests.support.ws import WsClient

pytestmark = pytest.mark.slow

ANONYMOUS_LIMIT = 30  # per address; under 40, so every check is counted in Redis at once


@dataclass
class Stack:
    nodes: dict[str, NodeProcess]
    nginx: Nginx

    @property
    def url(self) -> str:
        return self.nginx.url

    def running(self) -> None:
        """Both nodes up (a test before may have stopped one)."""
        for node in self.nodes.values():
            if node.proc is None or node.proc.poll() is not None:
                node.start()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    services: ServiceSet,
    database_url: str,
    redis_prefix: str,
) -> Iterator[Stack]:
    ensure_nginx()
    work = tmp_path_factory.mktemp("nginx")
    env = {
        "AGORA_DATABASE_URL": database_url,
        "AGORA_REDIS_URL": services.redis_url,
        "AGORA_REDIS_PREFIX": f"{redis_prefix}nginx{secrets.token_hex(3)}:",
        "AGORA_JWT_SECRET": JWT_SECRET,
        "AGORA_CLUSTER_HEARTBEAT": "0.3",
        "AGORA_CLUSTER_NODE_TIMEOUT": "2",
        "AGORA_PRESENCE_DEBOUNCE": "0.5",
        "AGORA_WS_RATE_LIMIT": "0",
        # Behind nginx: believe its X-Forwarded-For (as deploy/nginx.conf tells operators to).
        "AGORA_TRUSTED_PROXIES": "127.0.0.1",
        # Real limits, not the suite's 1000x: the anonymous one is checked per client address;
        # the others are off so that the tests' own traffic never meets them.
        "AGORA_RATE_LIMIT_SCALE": "1",
        "AGORA_RATE_LIMIT_API_ANONYMOUS": f"{ANONYMOUS_LIMIT}/600",
        **{
            f"AGORA_RATE_LIMIT_{name}": "0"
            for name in ("API", "REGISTER", "LOGIN", "LOGIN_ACCOUNT", "MESSAGES", "UPLOADS")
        },
    }
    nodes = {name: NodeProcess({**env, "AGORA_NODE_ID": name}, work) for name in ("ngx-a", "ngx-b")}
    nginx = Nginx(work / "nginx", [n.port for n in nodes.values()], free_port())
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: n.start(), nodes.values()))
        nginx.start()
        yield Stack(nodes, nginx)
    finally:
        nginx.stop()
        for node in nodes.values():
            node.kill()


async def _register(http: aiohttp.ClientSession, url: str) -> User:
    name = unique("ngx")
    resp = await http.post(
        f"{url}/api/v1/auth/register",
        json={"username": name, "email": f"{name}@example.test", "password": PASSWORD},
    )
    assert resp.status == 201, await resp.text()
    return User(await resp.json())


async def _direct_conversation(http: aiohttp.ClientSession, url: str) -> tuple[User, User, str]:
    a, b = await _register(http, url), await _register(http, url)
    resp = await http.post(
        f"{url}/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id}
    )
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    resp = await http.post(f"{url}/api/v1/friends/requests/{rid}/accept", headers=b.headers)
    assert resp.status == 200, await resp.text()
    resp = await http.post(
        f"{url}/api/v1/conversations", headers=a.headers, json={"member_ids": [b.id]}
    )
    assert resp.status == 201, await resp.text()
    return a, b, (await resp.json())["id"]


def _node_of(ws: WsClient) -> str:
    return str(ws.of("ready")[0]["node_id"])


async def _send_until_acked(ws: WsClient, cid: str, client_id: str, text: str) -> int:
    """Send, and send the same client_id again after a "retry" (the conversation's owner may
    be moving to the other node); the ack's seq."""
    for _ in range(100):
        await ws.send(
            {"type": "send", "conversation_id": cid, "client_id": client_id, "text": text}
        )
        frame = await _answer(ws, client_id)
        if frame["type"] == "ack":
            return int(frame["seq"])
        assert frame.get("retry"), frame
        await asyncio.sleep(0.2)
    raise AssertionError(f"{client_id} never acked")


async def _answer(ws: WsClient, client_id: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        for frame in ws.frames:
            mine = client_id in (frame.get("client_id"), frame.get("ref"))
            if mine and frame["type"] in ("ack", "error") and not frame.get("_seen"):
                frame["_seen"] = True
                return frame
        assert not ws.ws.closed, f"socket closed ({ws.close_code}) awaiting {client_id}"
        await asyncio.sleep(0.02)
    raise AssertionError(f"no answer for {client_id}")


async def _eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, f"not within {within}s"
        await asyncio.sleep(0.05)


def _messages(*sockets: WsClient) -> dict[int, str]:
    """seq -> text of every message frame these sockets got (live or synced)."""
    return {f["message"]["seq"]: f["message"]["text"] for ws in sockets for f in ws.of("message")}


async def test_config_checks_and_headers_and_sizes_pass(stack: Stack) -> None:
    stack.running()
    assert "test is successful" in stack.nginx.check()
    url = stack.url
    # Clients on addresses of their own (127.0.0.2 and .3; nginx listens on 127.0.0.1).
    one = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    two = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.3", 0)))
    async with aiohttp.ClientSession() as http, one, two:
        user = await _register(http, url)
        profile = f"{url}/api/v1/users/{user.id}"
        # X-Request-ID: the client's reaches the node (its log line) and comes back ...
        rid = f"ngx-{secrets.token_hex(6)}"
        resp = await http.get(profile, headers={"X-Request-ID": rid})
        assert resp.status == 200 and resp.headers["X-Request-ID"] == rid
        # (Both log lines are written after the response has gone: wait for them.)
        await _eventually(
            lambda: (
                f"[{rid}] GET /api/v1/users/{user.id} 200"
                in "".join(n.log for n in stack.nodes.values())
            )
        )
        await _eventually(lambda: f"id={rid}" in stack.nginx.access_log)
        # ... and without one, nginx makes it (32 hex digits; a node's own are 16).
        resp = await http.get(profile)
        made = resp.headers["X-Request-ID"]
        assert len(made) == 32 and int(made, 16) >= 0, made
        # The nodes see each client's own address (AGORA_TRUSTED_PROXIES): two clients, two
        # anonymous buckets, though both come through nginx; a forged X-Forwarded-For from a
        # client is not believed (nginx appends the real peer, which the node reads first).
        remaining = []
        for headers in ({}, {"X-Forwarded-For": "198.51.100.7"}, {}):
            resp = await one.get(profile, headers=headers)
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-RateLimit-Limit"] == str(ANONYMOUS_LIMIT)
            remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
        assert remaining == [ANONYMOUS_LIMIT - 1, ANONYMOUS_LIMIT - 2, ANONYMOUS_LIMIT - 3]
        resp = await two.get(profile)
        assert resp.headers["X-RateLimit-Remaining"] == str(ANONYMOUS_LIMIT - 1)
        # /metrics is not served through the proxy (the nodes' own ports are).
        resp = await http.get(f"{url}/metrics")
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"
        # Sizes: a JSON body over the node's 1 MiB passes nginx and meets the node's 413;
        # an upload just over 10 MiB passes nginx (the node refuses it: not an image) ...
        resp = await http.post(
            f"{url}/api/v1/posts",
            headers={**user.headers, "Content-Type": "application/json"},
            data=b'{"text": "' + b"x" * (2 << 20) + b'"}',
        )
        body = await resp.json()
        assert resp.status == 413 and body["error"]["code"] == "payload_too_large", body
        assert resp.headers["X-Request-ID"] != ""
        form = aiohttp.FormData()
        form.add_field("file", b"z" * (10 << 20) + b"z" * 4096, filename="big.png")
        resp = await http.post(f"{url}/api/v1/media", headers=user.headers, data=form)
        assert resp.status in (413, 415), await resp.text()
        assert resp.headers["X-Request-ID"]  # the node's answer, not nginx's
        # ... and one over nginx's 11 MiB is refused by nginx, in the same envelope.
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.nginx.port)
        writer.write(
            f"POST /api/v1/media HTTP/1.1\r\nHost: x\r\nContent-Length: {12 << 20}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert b"application/json" in head
        writer.close()


async def test_chat_across_nodes_and_a_drained_node_loses_nothing(stack: Stack) -> None:
    stack.running()
    url = stack.url
    async with aiohttp.ClientSession() as http:
        a, b, cid = await _direct_conversation(http, url)
        # (a) No stickiness: keep connecting b until its socket is on the other node than a's.
        wa = await WsClient.connect(url, a.access, session=http)
        wb = None
        for _ in range(20):
            candidate = await WsClient.connect(url, b.access, session=http)
            if _node_of(candidate) != _node_of(wa):
                wb = candidate
                break
            await candidate.close()
        assert wb is not None, "every socket of b landed on a's node"
        survivor, doomed = _node_of(wa), _node_of(wb)
        assert {survivor, doomed} == set(stack.nodes)
        # They chat, both ways, across the two nodes.
        seq = await _send_until_acked(wa, cid, "a-0", "hello from a")
        got = await wb.expect("message", where=lambda f: f["message"]["seq"] == seq)
        assert got["message"]["text"] == "hello from a"
        seq = await _send_until_acked(wb, cid, "b-0", "hello from b")
        got = await wa.expect("message", where=lambda f: f["message"]["seq"] == seq)
        assert got["message"]["text"] == "hello from b"
        await wb.expect("message", where=lambda f: f["message"]["seq"] == seq)  # b's own echo

        # (b) a keeps sending while b's node is stopped with SIGTERM.
        total = 30
        acked: dict[int, str] = {}

        async def talk() -> None:
            for n in range(1, total + 1):
                text = f"a says {n}"
                acked[await _send_until_acked(wa, cid, f"a-{n}", text)] = text
                await asyncio.sleep(0.03)

        talking = asyncio.create_task(talk())
        while len(acked) < 5:
            await asyncio.sleep(0.02)
        node = stack.nodes[doomed]
        stopping = asyncio.create_task(asyncio.to_thread(node.stop))
        assert await wb.closed(timeout=10) == 1001  # drained: "going away"
        last_seen = max(_messages(wb))
        away = len(acked)
        while len(acked) < away + 4:  # a few messages sent while b has no socket
            await asyncio.sleep(0.02)
        # b reconnects through nginx: the stopped node is skipped, it lands on the other.
        wb2 = await WsClient.connect(url, b.access, session=http)
        assert _node_of(wb2) == survivor
        await wb2.send({"type": "sync", "conversation_id": cid, "after_seq": last_seen})
        synced = await wb2.expect("synced", timeout=10)
        in_sync = [
            f["message"]["seq"]
            for f in wb2.frames[: wb2.frames.index(synced)]
            if f["type"] == "message"
        ]
        assert len(in_sync) >= 3 and min(in_sync) == last_seen + 1, (last_seen, in_sync)
        await asyncio.wait_for(talking, 60)
        assert await stopping == 0
        assert "draining" in node.log
        # Every message a sent reached b (live before, synced, or live after), none lost.
        expected = {1: "hello from a", 2: "hello from b", **acked}
        assert sorted(expected) == list(range(1, total + 3))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while _messages(wb, wb2) != expected and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert _messages(wb, wb2) == expected
        assert max(_messages(wb)) == last_seen < total + 2
        await wa.close()
        await wb2.close()


async def test_rest_answers_while_a_node_restarts(stack: Stack) -> None:
    stack.running()
    url = stack.url
    statuses: list[int | str] = []
    done = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        user = await _register(http, url)

        async def load() -> None:
            while not done.is_set():
                try:
                    async with http.get(f"{url}/api/v1/users/me", headers=user.headers) as resp:
                        await resp.read()
                        statuses.append(resp.status)
                except aiohttp.ClientError as exc:
                    statuses.append(repr(exc))

        loaders = [asyncio.create_task(load()) for _ in range(4)]
        try:
            await asyncio.sleep(0.5)
            victim = stack.nodes["ngx-a"]
            assert await asyncio.to_thread(victim.stop) == 0
            during = len(statuses)
            await asyncio.sleep(0.5)  # served by the other node alone
            assert len(statuses) > during
            await asyncio.to_thread(victim.start)
            # Back in rotation once its fail_timeout (10 s) has passed: it serves again.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while "GET /api/v1/users/me 200" not in victim.log and loop.time() < deadline:
                await asyncio.sleep(0.1)
            assert "GET /api/v1/users/me 200" in victim.log
        finally:
            done.set()
            await asyncio.gather(*loaders)
    failures = [s for s in statuses if s != 200]
    assert len(statuses) > 100 and not failures, (len(statuses), failures[:10])
    # nginx did meet the stopped node, and retried those requests on the other one.
    assert "Connection refused) while connecting to upstream" in stack.nginx.error_log
