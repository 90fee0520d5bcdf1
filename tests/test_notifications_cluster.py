"""Notifications across a cluster: caused on one node, pushed to a session on another; and
consumed by ``agora worker`` (a process that is not a node) while the nodes run none."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from agora.config import Config
from agora.server import keys
from agora.server.app import create_app
from tests.conftest import AppFactory
from tests.support.api import create_post, get_json, register
from tests.support.cluster import started_together
from tests.support.events import settled
from tests.support.ws import WsClient
from tests.test_cluster import FAST
from tests.test_events_faults import start_worker, worker_env

pytestmark = pytest.mark.timeout(90)


async def react(node: TestClient, user: object, post_id: str) -> None:
    resp = await node.put(
        f"/api/v1/posts/{post_id}/reactions",
        headers=user.headers,  # type: ignore[attr-defined]
        json={"type": "love"},
    )
    assert resp.status == 200, await resp.text()


async def test_a_notification_caused_on_one_node_reaches_a_session_on_the_other(
    make_client: AppFactory, transport: Config
) -> None:
    a = await make_client(create_app(transport.with_overrides(node_id="alpha", cluster=FAST)))
    # Only alpha consumes: every push to beta's session crosses nodes.
    quiet = replace(transport.events, consumers=False)
    b = await make_client(
        create_app(transport.with_overrides(node_id="beta", cluster=FAST, events=quiet))
    )
    await started_together(a, b)
    author, fan = await register(a), await register(a)
    post = await create_post(a, author, "on alpha", "public")
    here = await WsClient.connect(a, author.access)  # the author has a session on alpha
    ws = await WsClient.connect(b, author.access)  # and one on beta
    try:
        await asyncio.sleep(0.3)  # placed in Redis
        for _ in range(3):
            other = await register(a)
            await react(a, other, post["id"])
        await react(a, fan, post["id"])
        frames = []
        while not frames or frames[-1]["notification"]["notifications_count"] < 4:
            frames.append(await ws.expect("notification", timeout=10))
        # The group, pushed again each time it grew (events handled in one batch: once).
        counts = [f["notification"]["notifications_count"] for f in frames]
        assert counts == sorted(set(counts)) and counts[-1] == 4
        assert {f["notification"]["id"] for f in frames} == {frames[0]["notification"]["id"]}
        await settled(a, b)
        page = await get_json(b, "/api/v1/notifications", author)
        assert page["unread_count"] == 1 and page["items"] == [frames[-1]["notification"]]
        # Every session of the recipient hears it, on every node.
        latest = frames[-1]["notification"]
        await here.expect("notification", 10, lambda f: f["notification"] == latest)
    finally:
        await ws.close()
        await here.close()


async def test_agora_worker_consumes_while_the_nodes_run_no_consumers(
    make_client: AppFactory, config: Config, tmp_path: Path
) -> None:
    # The node relays; a worker process runs the consumers and pushes into the node's inbox.
    node_config = config.with_overrides(events=replace(config.events, consumers=False))
    node = await make_client(create_app(node_config))
    assert node.app[keys.EVENTS].runners == []
    env = worker_env(config, AGORA_EVENTS_RELAY="off")
    log = tmp_path / "worker.log"
    worker = start_worker(env, tmp_path, log)
    try:
        author, fan = await register(node), await register(node)
        post = await create_post(node, author, "worker", "public")
        ws = await WsClient.connect(node, author.access)
        try:
            await asyncio.sleep(0.3)
            await react(node, fan, post["id"])
            frame = await ws.expect("notification", timeout=20)
            assert frame["notification"]["kind"] == "reaction"
            assert frame["notification"]["actor"]["id"] == fan.id
        finally:
            await ws.close()
        page = await get_json(node, "/api/v1/notifications", author)
        assert [i["kind"] for i in page["items"]] == ["reaction"]
    finally:
        worker.terminate()
        assert worker.wait(15) == 0, log.read_text()
    assert "consumers notifications" in log.read_text()
