"""Where media bytes are kept: a local directory or an S3-compatible bucket, behind one Protocol.

Keys are content-addressed and strictly shaped (:data:`KEY_PATTERN`): the SHA-256 of the bytes in
lowercase hex, an optional ``-name`` for a rendition, an optional ``.ext``, e.g.
``"3a7b...e9.webp"`` or ``"3a7b...e9-small.webp"``. No ``/``, ``.`` run or upper case can pass, so
a key can never leave the store's directory or prefix; a bad key raises :class:`ValueError` before
anything is touched. Because the same key always names the same bytes, a put is idempotent, a
concurrent put of the same key is harmless, and the key itself is the strong HTTP validator
(:attr:`Stored.etag`), identical on both backends.

The backend is chosen once, by :func:`storage_for`, in the app factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from agora.config import Config

__all__ = [
    "CACHE_CONTROL",
    "KEY_PATTERN",
    "LocalStorage",
    "MediaStorage",
    "S3Storage",
    "StorageError",
    "Stored",
    "storage_for",
    "validate_key",
]

# sha256 hex, then an optional rendition name ("-small"), then an optional extension (".webp").
KEY_PATTERN = re.compile(r"[0-9a-f]{64}(?:-[a-z0-9]{1,16})?(?:\.[a-z0-9]{1,5})?")

# Objects never change under a key, so clients and proxies may keep them for a year.
CACHE_CONTROL = "public, max-age=31536000, immutable"

_T = TypeVar("_T")


class StorageError(Exception):
    """The store cannot be reached or refused an operation (answered 503 by the caller)."""


@dataclass(frozen=True)
class Stored:
    size: int
    # Strong validator for HTTP, unquoted (aiohttp's ``response.etag = ...`` adds the quotes):
    # the key itself, since a key names exactly one content.
    etag: str


class MediaStorage(Protocol):
    name: str  # "local" or "s3"

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store under `key` (callers use content-addressed keys: sha256 hex + extension, so the
        same bytes are one object). Idempotent; a concurrent put of the same key is harmless;
        a reader never sees a partial object."""

    async def stat(self, key: str) -> Stored | None:
        """Size and validator of the object, or None if there is none."""

    async def read(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) (end None: to the end), for range requests. KeyError if missing."""

    async def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""

    async def close(self) -> None:
        """Release connections and threads; the store is not used afterwards."""


def validate_key(key: str) -> str:
    """``key`` if it has the one allowed shape (:data:`KEY_PATTERN`), else ValueError."""
    if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None:
        raise ValueError(f"bad media key {key!r}: expected sha256 hex [-name][.ext]")
    return key


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"bad byte range [{start}, {end})")


def storage_for(config: Config) -> MediaStorage:
    """S3 when config.media.s3_bucket is set (then endpoint/keys as configured), else the local
    directory config.media_dir."""
    media = config.media
    if media.s3_bucket:
        return S3Storage(
            bucket=media.s3_bucket,
            endpoint=media.s3_endpoint,
            region=media.s3_region,
            access_key_id=media.s3_access_key_id,
            secret_access_key=media.s3_secret_access_key,
            prefix=media.s3_prefix,
        )
    return LocalStorage(config.media_dir)


class LocalStorage:
    """Files under ``root/ab/cd/<key>`` (``ab``, ``cd``: the key's first hex digits), so no
    directory holds more than a few thousand entries at millions of objects.

    Each put writes a temporary file (``.<key>.<random>.tmp``, a name no key can have) in the
    final directory, fsyncs it, renames it over the final name and fsyncs the directory: several
    nodes sharing the directory through a mounted volume see either no file or the whole file,
    also after a crash. File I/O runs in this store's own small thread pool, never on the event
    loop, and a slow disk cannot starve the loop's default executor (which resolves DNS).
    OS errors other than "not found" (disk full, permissions, a volume gone) are
    :class:`StorageError`.
    """

    name = "local"

    def __init__(self, root: Path, *, workers: int = 4) -> None:
        self.root = root
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="media-io")

    def path_of(self, key: str) -> Path:
        validate_key(key)
        return self.root / key[0:2] / key[2:4] / key

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except OSError as e:
            raise StorageError(f"media directory {self.root}: {e}") from e

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        # content_type is not kept on disk: the metadata in PostgreSQL holds it.
        await self._run(self._put, self.path_of(key), data)

    async def stat(self, key: str) -> Stored | None:
        return await self._run(self._stat, self.path_of(key), key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        path = self.path_of(key)
        _check_range(start, end)
        return await self._run(self._read, path, key, start, end)

    async def delete(self, key: str) -> None:
        # Empty directories stay: removing one could race a concurrent put into it.
        await self._run(self._delete, self.path_of(key))

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    @staticmethod
    def _put(path: Path, data: bytes) -> None:
        try:
            if path.stat().st_size == len(data):
                return  # same key, same length: the same content is already there
        except FileNotFoundError:
            pass
        directory = path.parent
        _make_dirs(directory)
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide it from a proxy
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _fsync_dir(directory)

    @staticmethod
    def _stat(path: Path, key: str) -> Stored | None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return Stored(size=size, etag=key)

    @staticmethod
    def _read(path: Path, key: str, start: int, end: int | None) -> bytes:
        try:
            with open(path, "rb") as f:
                if start:
                    f.seek(start)
                return f.read() if end is None else f.read(end - start)
        except FileNotFoundError:
            raise KeyError(key) from None

    @staticmethod
    def _delete(path: Path) -> None:
        path.unlink(missing_ok=True)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, fsyncing each parent that gained an entry
    (a new directory's name is only durable once its parent is synced)."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            continue  # another writer made it (and syncs its parent)
        _fsync_dir(new.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some network filesystems cannot fsync a directory; the rename is still atomic there.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class S3Storage:
    """An S3-compatible bucket (AWS, MinIO, Ceph, moto...) through aiobotocore.

    Objects are named ``<prefix>/<key>`` (no prefix: ``<key>``). Path-style addressing, so an
    endpoint on a plain host name or IP works. One client, made on first use and closed by
    :meth:`close`. Each request gives up after ``connect_timeout`` / ``read_timeout`` seconds
    (of silence) and ``max_attempts`` attempts, and each operation, retries included, after
    ``deadline`` seconds; an unreachable store, a 5xx or any refusal other than "no such key"
    (403, no such bucket...) is :class:`StorageError`. Credentials: the configured keys, else
    botocore's usual chain (environment, instance role...).
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,  # botocore's default: S3 asks clients to retry 500s and 503s
        deadline: float = 60.0,
        max_connections: int = 32,
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.deadline = deadline
        self._client_args: dict[str, Any] = {
            "region_name": region,
            "endpoint_url": endpoint,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "config": AioConfig(
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
                max_pool_connections=max_connections,
            ),
        }
        self._client: Any = None  # aiobotocore is untyped
        self._client_cm: Any = None
        self._lock = asyncio.Lock()

    def object_name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    async def _get_client(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    cm = get_session().create_client("s3", **self._client_args)
                    client = await cm.__aenter__()
                    # botocore sends every PutObject with "Expect: 100-continue", and aiohttp
                    # waits for the "100" with no timeout at all: a server that accepts the
                    # connection and never answers would hang the put forever. Our bodies are
                    # small enough to send at once.
                    client.meta.events.register_last("before-call.s3", _drop_expect_header)
                    self._client_cm, self._client = cm, client
        return self._client

    @contextlib.asynccontextmanager
    async def _guard(self, what: str, key: str) -> AsyncIterator[None]:
        """The operation's deadline, and its failures as StorageError."""
        try:
            async with asyncio.timeout(self.deadline):
                yield
        except _TRANSPORT_ERRORS as e:
            where = f"{self.bucket}/{self.prefix}{key} at {self.endpoint or 'AWS'}"
            raise StorageError(f"S3 {what} {where}: {e or type(e).__name__}") from e

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        name = self.object_name(key)
        async with self._guard("put", key):
            client = await self._get_client()
            await client.put_object(
                Bucket=self.bucket,
                Key=name,
                Body=data,
                ContentType=content_type,
                CacheControl=CACHE_CONTROL,
            )

    async def stat(self, key: str) -> Stored | None:
        name = self.object_name(key)
        async with self._guard("stat", key):
            client = await self._get_client()
            try:
                head = await client.head_object(Bucket=self.bucket, Key=name)
            except ClientError as e:
                if _code(e) in _MISSING:
                    return None
                raise
            return Stored(size=int(head["ContentLength"]), etag=key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        name = self.object_name(key)
        _check_range(start, end)
        if end is not None and end == start:
            # "bytes=5-4" is no range at all (a server would send the whole object).
            if await self.stat(key) is None:
                raise KeyError(key)
            return b""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        async with self._guard("read", key):
            client = await self._get_client()
            try:
                response = await client.get_object(**args)
            except ClientError as e:
                code = _code(e)
                if code in _MISSING:
                    raise KeyError(key) from None
                if code == "InvalidRange":  # start at or past the end: nothing there
                    return b""
                raise
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data

    async def delete(self, key: str) -> None:
        name = self.object_name(key)
        async with self._guard("delete", key):
            client = await self._get_client()
            try:
                await client.delete_object(Bucket=self.bucket, Key=name)
            except ClientError as e:
                if _code(e) not in _MISSING:  # S3 says 204 anyway; some servers 404
                    raise

    async def close(self) -> None:
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            await cm.__aexit__(None, None, None)


# Everything a request can fail with short of a bug: botocore's errors (connection refused,
# timeouts, 4xx/5xx answers), what the aiohttp body stream raises when a transfer breaks, and
# the operation's deadline.
_TRANSPORT_ERRORS = (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError, OSError)
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _drop_expect_header(params: dict[str, Any], **_: Any) -> None:
    params.get("headers", {}).pop("Expect", None)
