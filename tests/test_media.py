"""POST /api/v1/media and GET /media/...: uploads streamed and checked, images served to
browsers with the right headers, signatures and visibility, attached to posts and avatars,
removed with their post or when nobody uses them. Real images, made by Pillow."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from agora.clock import ManualClock
from agora.config import Config
from agora.server import keys
from agora.server.app import create_app
from tests.conftest import AppFactory
from tests.support.api import User, befriend, expect_error, register
from tests.support.media import ACCESS, admin_client, new_bucket
from tests.support.ws import WsClient


def jpeg(width: int = 800, height: int = 600, seed: int = 0) -> bytes:
    image = Image.new("RGB", (width, height), (seed % 256, 120, 200))
    for x in range(0, width, 7):
        image.putpixel((x, (x * 3 + seed) % height), (255, seed % 256, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def form(data: bytes, name: str = "photo.jpg", **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("file", data, filename=name, content_type="application/octet-stream")
    for key, value in fields.items():
        body.add_field(key, value)
    return body


async def upload(
    client: TestClient, user: User, data: bytes, status: int = 201, **fields: str
) -> Any:
    resp = await client.post("/api/v1/media", data=form(data, **fields), headers=user.headers)
    body = await resp.json()
    assert resp.status == status, body
    return body


@pytest.mark.parametrize("library", ["vips", "pillow"])
async def test_an_upload_is_processed_stored_and_served(
    make_client: AppFactory, config: Config, library: str
) -> None:
    """On either imaging library (AGORA_MEDIA_LIBRARY)."""
    client = await make_client(media=replace(config.media, library=library))
    a = await register(client)
    media = await upload(client, a, jpeg(), description="a blue field", focus="0.5,-0.25")
    assert media["content_type"] == "image/jpeg"
    assert (media["width"], media["height"]) == (800, 600)
    assert media["description"] == "a blue field"
    assert media["focus"] == {"x": 0.5, "y": -0.25}
    assert len(media["blurhash"]) == 36  # 4x4 components
    # Not attached yet: only signed URLs, working without an Authorization header.
    assert "sig=" in media["url"] and "sig=" in media["thumbnail_url"]
    resp = await client.get(media["url"])
    assert resp.status == 200
    body = await resp.read()
    assert Image.open(io.BytesIO(body)).size == (800, 600)
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["ETag"].startswith('"')
    assert resp.headers["Cache-Control"].startswith("private")
    small = await client.get(media["thumbnail_url"])
    assert small.status == 200
    width, height = Image.open(io.BytesIO(await small.read())).size
    assert width * height <= 640 * 360 * 1.2
    # Without the signature: as if it did not exist.
    plain = media["url"].split("?")[0]
    await expect_error(await client.get(plain), 404, "not_found")
    # A range; the ETag again.
    part = await client.get(media["url"], headers={"Range": "bytes=0-9"})
    assert part.status == 206 and await part.read() == body[:10]
    assert part.headers["Content-Range"] == f"bytes 0-9/{len(body)}"
    tail = await client.get(media["url"], headers={"Range": f"bytes={len(body)}-"})
    assert tail.status == 416
    again = await client.get(media["url"], headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"just some text, renamed to photo.jpg" * 10, 415, "unsupported_media_type"),
        (jpeg()[:400], 415, "unsupported_media_type"),  # truncated
        (b"\x89PNG\r\n\x1a\n" + b"not a png at all" * 20, 415, "unsupported_media_type"),
        (jpeg() + b"<script>alert(1)</script>", 415, "unsupported_media_type"),  # a polyglot
    ],
)
async def test_what_is_not_an_image_is_refused(
    client: TestClient, db: asyncpg.Connection, data: bytes, status: int, code: str
) -> None:
    a = await register(client)
    resp = await client.post("/api/v1/media", data=form(data), headers=a.headers)
    error = await expect_error(resp, status, code)
    assert error["message"]
    kept = await db.fetchval("SELECT count(*) FROM media.uploads WHERE owner_id = $1", int(a.id))
    assert kept == 0


async def test_a_pixel_bomb_is_refused_before_it_is_decoded(client: TestClient) -> None:
    a = await register(client)
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")  # 50 kB on disk, 400 megapixels decoded
    resp = await client.post("/api/v1/media", data=form(out.getvalue()), headers=a.headers)
    await expect_error(resp, 413, "payload_too_large")


async def test_an_oversized_body_is_stopped_while_streaming(
    make_client: AppFactory, config: Config, db: asyncpg.Connection
) -> None:
    """The cap is enforced while reading: the node answers 413 long before a 20 MB body is
    sent, and keeps nothing."""
    client = await make_client(media=replace(config.media, max_bytes=256 * 1024))
    a = await register(client)
    boundary = "agoraboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    total = 20 * 1024 * 1024
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        (
            "POST /api/v1/media HTTP/1.1\r\n"
            f"Host: {client.host}\r\n"
            f"Authorization: Bearer {a.access}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(head) + total}\r\n\r\n"
        ).encode()
        + head
        + jpeg()[:16]
    )
    sent = 16
    chunk = b"\0" * 65536
    status_line = b""
    try:
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            try:
                status_line = await asyncio.wait_for(reader.readline(), 0.001)
            except TimeoutError:
                continue
            if status_line:
                break
        if not status_line:
            status_line = await asyncio.wait_for(reader.readline(), 5)
    except (ConnectionError, OSError):
        status_line = status_line or await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    assert sent < total / 2, sent  # the node stopped reading; the client did not finish
    kept = await db.fetchval("SELECT count(*) FROM media.uploads WHERE owner_id = $1", int(a.id))
    assert kept == 0


async def test_the_same_bytes_are_stored_once(client: TestClient, db: asyncpg.Connection) -> None:
    a, b = await register(client), await register(client)
    data = jpeg(seed=77)
    first, second, third = await asyncio.gather(
        upload(client, a, data), upload(client, b, data), upload(client, a, data)
    )
    assert len({first["id"], second["id"], third["id"]}) == 3
    keys_ = await db.fetch(
        "SELECT DISTINCT original_key FROM media.uploads WHERE id = ANY($1::bigint[])",
        [int(m["id"]) for m in (first, second, third)],
    )
    assert len(keys_) == 1
    objects = await db.fetchval(
        "SELECT count(*) FROM media.objects WHERE key = $1", keys_[0]["original_key"]
    )
    assert objects == 1


async def test_media_follow_their_post(client: TestClient, db: asyncpg.Connection) -> None:
    author, friend, stranger = [await register(client) for _ in range(3)]
    await befriend(client, author, friend)
    media = await upload(client, author, jpeg(seed=3))
    resp = await client.post(
        "/api/v1/posts",
        json={"text": "a photo", "visibility": "friends", "media_ids": [media["id"]]},
        headers=author.headers,
    )
    assert resp.status == 201, await resp.text()
    post = await resp.json()
    [shown] = post["media"]
    assert shown["id"] == media["id"] and "sig=" in shown["url"]
    # The friend sees the post with signed URLs that work; the plain URL is nobody's.
    seen = await (await client.get(f"/api/v1/posts/{post['id']}", headers=friend.headers)).json()
    assert (await client.get(seen["media"][0]["url"])).status == 200
    await expect_error(await client.get(shown["url"].split("?")[0]), 404, "not_found")
    # An upload is attached once, by its owner only.
    for user in (author, stranger):
        resp = await client.post(
            "/api/v1/posts",
            json={"text": "again", "visibility": "public", "media_ids": [media["id"]]},
            headers=user.headers,
        )
        error = await expect_error(resp, 422, "validation_error")
        assert "media_ids" in error["fields"]
    # A public post's media have plain URLs, for anyone.
    other = await upload(client, author, jpeg(seed=4))
    resp = await client.post(
        "/api/v1/posts",
        json={"text": "public", "visibility": "public", "media_ids": [other["id"]]},
        headers=author.headers,
    )
    public = await resp.json()
    url = public["media"][0]["url"]
    assert "sig=" not in url
    resp = await client.get(url)
    assert resp.status == 200 and "immutable" in resp.headers["Cache-Control"]
    # Made friends-only: its plain URL stops at once (nobody gets a signed one but who may see).
    resp = await client.patch(
        f"/api/v1/posts/{public['id']}", json={"visibility": "friends"}, headers=author.headers
    )
    assert resp.status == 200
    await expect_error(await client.get(url), 404, "not_found")
    resp = await client.patch(
        f"/api/v1/posts/{public['id']}", json={"visibility": "public"}, headers=author.headers
    )
    assert (await client.get(url)).status == 200
    # Deleted with the post, at once, with a media.deleted event.
    resp = await client.delete(f"/api/v1/posts/{public['id']}", headers=author.headers)
    assert resp.status == 204
    await expect_error(await client.get(url), 404, "not_found")
    deleted = await db.fetchval(
        "SELECT count(*) FROM events.outbox WHERE type = 'media.deleted' AND aggregate_id = $1",
        int(other["id"]),
    )
    assert deleted == 1


async def test_at_most_four_per_post(client: TestClient) -> None:
    a = await register(client)
    ids = [(await upload(client, a, jpeg(seed=10 + i)))["id"] for i in range(5)]
    resp = await client.post(
        "/api/v1/posts", json={"text": "many", "media_ids": ids}, headers=a.headers
    )
    await expect_error(resp, 422, "validation_error")


async def test_avatars_are_own_uploads_with_public_urls(client: TestClient) -> None:
    a, b = await register(client), await register(client)
    mine = await upload(client, a, jpeg(seed=21))
    resp = await client.patch(
        "/api/v1/users/me", json={"avatar_media_id": mine["id"]}, headers=b.headers
    )
    await expect_error(resp, 422, "validation_error")
    resp = await client.patch(
        "/api/v1/users/me", json={"avatar_media_id": mine["id"]}, headers=a.headers
    )
    assert resp.status == 200, await resp.text()
    avatar_url = (await resp.json())["avatar_url"]
    assert avatar_url and "sig=" not in avatar_url
    resp = await client.get(avatar_url)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("image/")


async def test_a_signed_url_expires(make_client: AppFactory, config: Config) -> None:
    clock = ManualClock(start=time.time())
    client = await make_client(
        create_app(config.with_overrides(media=replace(config.media, url_ttl=60)), clock=clock)
    )
    a = await register(client)
    media = await upload(client, a, jpeg(seed=5))
    assert (await client.get(media["url"])).status == 200
    clock.advance(121)
    await expect_error(await client.get(media["url"]), 403, "forbidden")
    forged = media["url"].replace("sig=", "sig=x")
    await expect_error(await client.get(forged), 404, "not_found")


async def test_uploads_nobody_uses_are_removed(client: TestClient, db: asyncpg.Connection) -> None:
    a = await register(client)
    orphan = await upload(client, a, jpeg(seed=31))
    kept = await upload(client, a, jpeg(seed=32))
    resp = await client.patch(
        "/api/v1/users/me", json={"avatar_media_id": kept["id"]}, headers=a.headers
    )
    assert resp.status == 200
    key = await db.fetchval(
        "SELECT original_key FROM media.uploads WHERE id = $1", int(orphan["id"])
    )
    service = client.app[keys.MEDIA]
    await db.execute(
        "UPDATE media.uploads SET created_at = now() - interval '2 days' WHERE id = ANY($1)",
        [int(orphan["id"]), int(kept["id"])],
    )
    done = await service.cleanup_once(grace=0)
    assert done["uploads"] >= 1
    gone = await db.fetchval("SELECT count(*) FROM media.uploads WHERE id = $1", int(orphan["id"]))
    assert gone == 0
    assert await service.storage.stat(key) is None  # its bytes too
    assert await db.fetchval("SELECT count(*) FROM media.objects WHERE key = $1", key) == 0
    still = await db.fetchval("SELECT count(*) FROM media.uploads WHERE id = $1", int(kept["id"]))
    assert still == 1  # an avatar stays


async def test_uploads_are_rate_limited(make_client: AppFactory, config: Config) -> None:
    client = await make_client(limits=config.limits.but(uploads=(2, 1800)))
    a = await register(client)
    for seed in (41, 42):
        await upload(client, a, jpeg(seed=seed))
    resp = await client.post("/api/v1/media", data=form(jpeg(seed=43)), headers=a.headers)
    await expect_error(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"]


async def test_a_body_that_is_not_multipart_is_a_clear_400(client: TestClient) -> None:
    a = await register(client)
    for content_type, body in (
        ("multipart/form-data", b"--x\r\n"),  # no boundary
        ("multipart/form-data; boundary=zz", b"garbage without delimiters"),
    ):
        resp = await client.post(
            "/api/v1/media", data=body, headers={**a.headers, "Content-Type": content_type}
        )
        assert resp.status in (400, 422), await resp.text()
        assert (await resp.json())["error"]["code"] == "validation_error"
    resp = await client.post("/api/v1/media", json={"file": "x"}, headers=a.headers)
    await expect_error(resp, 415, "unsupported_media_type")


async def test_uploads_on_one_node_are_served_by_another(
    make_client: AppFactory, config: Config, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two nodes sharing the media directory (a mounted volume) or an S3-compatible bucket
    (moto in server mode, started by the tests): an upload on one is served by the other."""
    shared = tmp_path / "shared-media"
    endpoint = request.getfixturevalue("moto_endpoint")
    async with admin_client(endpoint) as admin:
        bucket = await new_bucket(admin)
    s3 = replace(
        config.media,
        s3_bucket=bucket,
        s3_endpoint=endpoint,
        s3_access_key_id=ACCESS["aws_access_key_id"],
        s3_secret_access_key=ACCESS["aws_secret_access_key"],
    )
    for changes in ({"media_dir": shared}, {"media": s3}):
        one, two = await make_client(**changes), await make_client(**changes)
        a = await register(one)
        media = await upload(one, a, jpeg(seed=61))
        resp = await two.get(media["url"])
        assert resp.status == 200, changes
        assert Image.open(io.BytesIO(await resp.read())).size == (800, 600)


async def test_the_event_loop_keeps_answering_while_images_are_processed(
    client: TestClient,
) -> None:
    """Decoding and resizing run in worker threads: WebSocket pings are answered while four
    12-megapixel uploads are processed (a decode on the event loop would hold every ping for
    the whole of it). The bound is generous; bench media measures the real figure."""
    a = await register(client)
    ws = await WsClient.connect(client, a.access)
    images = [jpeg(4000, 3000, seed=70 + i) for i in range(4)]
    loop = asyncio.get_running_loop()
    uploads = asyncio.gather(*(upload(client, a, data) for data in images))
    rtts = []
    while not uploads.done():
        sent = loop.time()
        await ws.send({"type": "ping"})
        await ws.expect("pong")
        rtts.append(loop.time() - sent)
        await asyncio.sleep(0.06)  # under the sessions' frame rate limit
    await uploads
    assert len(rtts) >= 5, rtts
    assert max(rtts) < 0.25, sorted(rtts)[-5:]


async def test_a_full_pool_refuses_at_once(make_client: AppFactory, config: Config) -> None:
    """One worker holds 4 uploads at most (read, waiting or processed); the others are refused
    at once (503 with Retry-After) instead of queueing in memory."""
    client = await make_client(media=replace(config.media, workers=1, upload_limit=0))
    a = await register(client)
    images = [jpeg(4000, 3000, seed=90 + i) for i in range(7)]
    answers = await asyncio.gather(
        *(client.post("/api/v1/media", data=form(data), headers=a.headers) for data in images)
    )
    statuses = sorted(r.status for r in answers)
    assert statuses.count(201) >= 4 and 503 in statuses, statuses
    for resp in answers:
        if resp.status == 503:
            await expect_error(resp, 503, "unavailable")
            assert resp.headers["Retry-After"]
