"""Media storage: one suite over the local directory and an S3-compatible server (moto in server
mode, started here on a free port), plus what only one backend has (file layout and atomic
writes; object headers, prefix, unreachable or silent endpoints)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agora.config import load_config
from agora.media.storage import (
    CACHE_CONTROL,
    LocalStorage,
    MediaStorage,
    S3Storage,
    StorageError,
    Stored,
    storage_for,
)
from tests.support.media import admin_client, new_bucket

PREFIX = "media"
# A hang guard, not a speed target: a store that cannot answer must fail well within this.
GIVE_UP = 15.0


def key_of(data: bytes, ext: str = ".bin") -> str:
    return hashlib.sha256(data).hexdigest() + ext


@pytest.fixture
async def s3_admin(moto_endpoint: str) -> AsyncIterator[Any]:
    async with admin_client(moto_endpoint) as client:
        yield client


async def bucket_names(admin: Any, bucket: str) -> list[str]:
    listing = await admin.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@dataclass
class Backend:
    storage: MediaStorage
    # Every name the store holds (temporary files too), relative to its root or prefix.
    objects: Callable[[], Awaitable[list[str]]]


@pytest.fixture(params=["local", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        root = tmp_path / "media"
        local = LocalStorage(root)

        async def files() -> list[str]:
            if not root.exists():
                return []
            return sorted(p.name for p in root.rglob("*") if p.is_file())

        yield Backend(local, files)
        await local.close()
        return

    endpoint = request.getfixturevalue("moto_endpoint")  # started by the first S3 test only
    async with admin_client(endpoint) as admin:
        bucket = await new_bucket(admin)
        s3 = s3_store(bucket, endpoint=endpoint, prefix=PREFIX)

        async def names() -> list[str]:
            return [n.removeprefix(f"{PREFIX}/") for n in await bucket_names(admin, bucket)]

        yield Backend(s3, names)
        await s3.close()


# -- the same behaviour on both backends ----------------------------------------------------------


async def test_round_trip(backend: Backend) -> None:
    store = backend.storage
    data = os.urandom(50_000)
    key = key_of(data, ".jpg")
    assert await store.stat(key) is None

    await store.put(key, data, "image/jpeg")

    assert await store.stat(key) == Stored(size=len(data), etag=key)
    assert await store.read(key) == data
    assert await backend.objects() == [key]


async def test_empty_object(backend: Backend) -> None:
    key = key_of(b"")
    await backend.storage.put(key, b"", "application/octet-stream")
    assert await backend.storage.stat(key) == Stored(size=0, etag=key)
    assert await backend.storage.read(key) == b""


RANGES = [
    (0, None),
    (100, None),  # start only
    (100, 200),  # start and end
    (0, 1),
    (10_000, 20_000),  # end past the size: to the end
    (10_239, None),  # the last byte
    (10_240, None),  # start at the size: nothing
    (50_000, None),  # start past the size: nothing
    (50_000, 60_000),
    (5, 5),  # an empty range
]


@pytest.mark.parametrize(("start", "end"), RANGES)
async def test_ranges(backend: Backend, start: int, end: int | None) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes, every offset recognisable
    key = key_of(data, ".png")
    await backend.storage.put(key, data, "image/png")
    assert await backend.storage.read(key, start, end) == data[start:end]


@pytest.mark.parametrize(("start", "end"), [(-1, None), (10, 5), (0, -1)])
async def test_bad_ranges_refused(backend: Backend, start: int, end: int | None) -> None:
    data = b"x" * 100
    key = key_of(data)
    await backend.storage.put(key, data, "application/octet-stream")
    with pytest.raises(ValueError):
        await backend.storage.read(key, start, end)


async def test_put_twice_is_one_object(backend: Backend) -> None:
    data = os.urandom(4096)
    key = key_of(data, ".webp")
    await backend.storage.put(key, data, "image/webp")
    await backend.storage.put(key, data, "image/webp")
    assert await backend.objects() == [key]
    assert await backend.storage.read(key) == data


async def test_concurrent_puts_of_one_key(backend: Backend) -> None:
    data = os.urandom(2 * 1024 * 1024)
    key = key_of(data, ".gif")
    await asyncio.gather(*(backend.storage.put(key, data, "image/gif") for _ in range(8)))
    assert await backend.objects() == [key]  # one object, no temporary file left behind
    assert await backend.storage.stat(key) == Stored(size=len(data), etag=key)
    assert await backend.storage.read(key) == data


async def test_delete(backend: Backend) -> None:
    store = backend.storage
    kept, gone = os.urandom(100), os.urandom(100)
    await store.put(key_of(kept), kept, "application/octet-stream")
    await store.put(key_of(gone), gone, "application/octet-stream")

    await store.delete(key_of(gone))

    assert await store.stat(key_of(gone)) is None
    with pytest.raises(KeyError):
        await store.read(key_of(gone))
    with pytest.raises(KeyError):
        await store.read(key_of(gone), 10, 20)
    with pytest.raises(KeyError):
        await store.read(key_of(gone), 5, 5)
    assert await store.read(key_of(kept)) == kept
    await store.delete(key_of(gone))  # already gone: fine
    await store.delete(key_of(b"never stored"))
    assert await backend.objects() == [key_of(kept)]


async def test_missing(backend: Backend) -> None:
    key = key_of(b"nothing here")
    assert await backend.storage.stat(key) is None
    with pytest.raises(KeyError):
        await backend.storage.read(key)


GOOD_HASH = "0" * 64
BAD_KEYS = [
    "../x",
    f"../{GOOD_HASH}",
    f"{GOOD_HASH}/../../etc/passwd",
    "A" * 64,  # upper case
    GOOD_HASH.upper().replace("0", "A"),
    "ab" * 31,  # too short
    "ab" * 33,  # too long
    "",
    f"/{GOOD_HASH}",
    f"{GOOD_HASH}.",
    f"{GOOD_HASH}.JPG",
    f"{GOOD_HASH}.toolong",
    f"{GOOD_HASH}..jpg",
    f"{GOOD_HASH}\n",
    f"{GOOD_HASH}\x00.jpg",
    f"{GOOD_HASH}-Small.jpg",
    f"{GOOD_HASH} .jpg",
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_refused_before_anything(backend: Backend, key: str) -> None:
    store = backend.storage
    with pytest.raises(ValueError):
        await store.put(key, b"data", "image/png")
    with pytest.raises(ValueError):
        await store.stat(key)
    with pytest.raises(ValueError):
        await store.read(key)
    with pytest.raises(ValueError):
        await store.delete(key)
    assert await backend.objects() == []


@pytest.mark.parametrize("key", [GOOD_HASH, f"{GOOD_HASH}.jpg", f"{GOOD_HASH}-small.webp"])
async def test_good_key_shapes(backend: Backend, key: str) -> None:
    await backend.storage.put(key, b"abc", "image/webp")
    assert await backend.storage.read(key) == b"abc"


async def test_bad_key_touches_no_network() -> None:
    # Nothing listens there: a request would be a StorageError, not the ValueError.
    store = s3_store("bucket", endpoint=f"http://127.0.0.1:{closed_port()}", max_attempts=1)
    with pytest.raises(ValueError):
        await store.put("../x", b"data", "image/png")
    with pytest.raises(ValueError):
        await store.read(GOOD_HASH, 10, 5)
    await store.close()


# -- local directory ------------------------------------------------------------------------------


async def test_local_layout(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "media")
    data = b"layout"
    key = key_of(data, ".png")
    await store.put(key, data, "image/png")
    path = tmp_path / "media" / key[0:2] / key[2:4] / key
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a proxy serving the volume
    await store.close()


async def test_local_write_is_never_visible_partly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes are written and synced under a temporary name in the final directory; the final
    name appears only by the rename."""
    store = LocalStorage(tmp_path)
    data = os.urandom(1024 * 1024)
    key = key_of(data, ".jpg")
    final = store.path_of(key)
    seen: list[tuple[bool, dict[str, int]]] = []  # at each fsync: final name there? files
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        if final.parent.exists():
            files = {p.name: p.stat().st_size for p in final.parent.iterdir()}
            seen.append((final.exists(), files))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watching_fsync)  # the same os.fsync the store calls
    await store.put(key, data, "image/jpeg")
    monkeypatch.undo()

    # The temporary file's own fsync: written in full, and the final name is not there yet.
    while_writing = [
        (exists, files) for exists, files in seen if any(n.endswith(".tmp") for n in files)
    ]
    assert len(while_writing) == 1, seen
    exists, files = while_writing[0]
    assert not exists
    ((temp, size),) = files.items()
    assert temp.startswith(f".{key}.") and size == len(data)
    assert sorted(p.name for p in final.parent.iterdir()) == [key]
    await store.close()


async def test_local_reader_sees_nothing_or_everything(tmp_path: Path) -> None:
    """Another node polling the shared directory while big files are written."""
    store = LocalStorage(tmp_path)
    for _ in range(3):
        data = os.urandom(16 * 1024 * 1024)
        key = key_of(data)
        path = store.path_of(key)
        stop = threading.Event()
        observed: list[int | None] = []
        reader = threading.Thread(target=poll_file, args=(path, stop, observed))
        reader.start()
        try:
            await store.put(key, data, "application/octet-stream")
            await asyncio.sleep(0.05)  # let the reader see the finished file too
        finally:
            stop.set()
            await asyncio.to_thread(reader.join)
        assert set(observed) <= {None, len(data)}, sorted(set(observed), key=str)
        assert len(data) in observed
    await store.close()


def poll_file(path: Path, stop: threading.Event, observed: list[int | None]) -> None:
    """Read ``path`` again and again until ``stop``: each time its length, or None if absent."""
    while not stop.is_set():
        try:
            observed.append(len(path.read_bytes()))
        except FileNotFoundError:
            observed.append(None)


async def test_local_broken_directory_is_a_storage_error(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "media"
    not_a_directory.write_bytes(b"a file where the media directory should be")
    store = LocalStorage(not_a_directory)
    key = key_of(b"data")
    with pytest.raises(StorageError):
        await store.put(key, b"data", "application/octet-stream")
    with pytest.raises(StorageError):
        await store.stat(key)
    with pytest.raises(StorageError):
        await store.read(key)
    await store.close()


# -- S3 -------------------------------------------------------------------------------------------


async def test_s3_object_headers_and_prefix(moto_endpoint: str, s3_admin: Any) -> None:
    bucket = await new_bucket(s3_admin)
    store = s3_store(
        bucket, endpoint=moto_endpoint, prefix="/tenant/media/"
    )  # slashes around the prefix are normalised
    data = os.urandom(1000)
    key = key_of(data, ".webp")
    await store.put(key, data, "image/webp")

    head = await s3_admin.head_object(Bucket=bucket, Key=f"tenant/media/{key}")
    assert head["ContentType"] == "image/webp"
    assert head["CacheControl"] == CACHE_CONTROL
    assert head["ContentLength"] == len(data)
    assert await bucket_names(s3_admin, bucket) == [f"tenant/media/{key}"]
    await store.close()


async def test_s3_without_prefix(moto_endpoint: str, s3_admin: Any) -> None:
    bucket = await new_bucket(s3_admin)
    store = s3_store(bucket, endpoint=moto_endpoint)
    key = key_of(b"top")
    await store.put(key, b"top", "application/octet-stream")
    assert await bucket_names(s3_admin, bucket) == [key]
    await store.close()


async def test_s3_missing_bucket_is_a_storage_error(moto_endpoint: str) -> None:
    store = s3_store(f"no-such-{secrets.token_hex(4)}", endpoint=moto_endpoint)
    key = key_of(b"data")
    with pytest.raises(StorageError):
        await store.put(key, b"data", "application/octet-stream")
    with pytest.raises(StorageError):
        await store.read(key)
    await store.close()


async def test_s3_unreachable_is_a_storage_error() -> None:
    """Nothing listens on the port: refused at once, a few bounded retries, then StorageError.
    The store's default timeouts and retries are what is tested here."""
    store = s3_store("bucket", endpoint=f"http://127.0.0.1:{closed_port()}")
    key = key_of(b"data")
    async with asyncio.timeout(GIVE_UP):
        with pytest.raises(StorageError):
            await store.put(key, b"data", "application/octet-stream")
        with pytest.raises(StorageError):
            await store.stat(key)
        with pytest.raises(StorageError):
            await store.read(key)
        with pytest.raises(StorageError):
            await store.read(key, 10, 20)
        with pytest.raises(StorageError):
            await store.delete(key)
    await store.close()


async def test_s3_silent_endpoint_times_out() -> None:
    """A server that accepts connections and never answers (a hung proxy): the read timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes handshakes; nobody ever reads or answers
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = s3_store("bucket", endpoint=endpoint, connect_timeout=1, read_timeout=0.5)
        key = key_of(b"data")
        async with asyncio.timeout(GIVE_UP):
            with pytest.raises(StorageError):
                await store.put(key, b"data", "application/octet-stream")
            with pytest.raises(StorageError):
                await store.stat(key)
            with pytest.raises(StorageError):
                await store.read(key)
        await store.close()


async def test_s3_deadline_bounds_a_whole_operation() -> None:
    """However long the per-request timeouts, an operation ends at its deadline."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = s3_store("bucket", endpoint=endpoint, read_timeout=600, deadline=0.5)
        async with asyncio.timeout(GIVE_UP):
            with pytest.raises(StorageError):
                await store.put(key_of(b"data"), b"data", "application/octet-stream")
        await store.close()


async def test_s3_close_then_reuse_opens_a_new_client(moto_endpoint: str, s3_admin: Any) -> None:
    bucket = await new_bucket(s3_admin)
    store = s3_store(bucket, endpoint=moto_endpoint)
    await store.close()  # never opened: fine
    key = key_of(b"again")
    await store.put(key, b"again", "application/octet-stream")
    await store.close()
    assert await store.read(key) == b"again"
    await store.close()


# -- choosing the backend -------------------------------------------------------------------------


async def test_storage_for(tmp_path: Path) -> None:
    base = {"AGORA_ENV": "test", "AGORA_DATA_DIR": str(tmp_path)}
    local = storage_for(load_config(base))
    assert isinstance(local, LocalStorage) and local.name == "local"
    assert local.root == tmp_path / "media"
    await local.close()

    s3 = storage_for(
        load_config(
            {
                **base,
                "AGORA_MEDIA_S3_BUCKET": "agora",
                "AGORA_MEDIA_S3_ENDPOINT": "http://127.0.0.1:9000",
                "AGORA_MEDIA_S3_ACCESS_KEY_ID": "id",
                "AGORA_MEDIA_S3_SECRET_ACCESS_KEY": "secret",
                "AGORA_MEDIA_S3_PREFIX": "m",
            }
        )
    )
    assert isinstance(s3, S3Storage) and s3.name == "s3"
    assert (s3.bucket, s3.endpoint, s3.prefix) == ("agora", "http://127.0.0.1:9000", "m/")
    assert s3.object_name(GOOD_HASH) == f"m/{GOOD_HASH}"
    await s3.close()


def s3_store(bucket: str, **options: Any) -> S3Storage:
    """A store with the credentials moto accepts (any)."""
    return S3Storage(bucket, access_key_id="testing", secret_access_key="testing", **options)


def closed_port() -> int:
    """A port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
