"""Media: uploads (streamed, checked, processed off the event loop, stored), their URLs, and
serving them to browsers.

**Upload.** The multipart body is read part by part; the file's bytes are counted as they
arrive and the read stops at ``AGORA_MEDIA_MAX_BYTES`` (413, nothing kept). Its first bytes
decide the type (a name or a declared type never does): anything but JPEG, PNG, GIF or WebP is
415 before the rest is read. The image is then decoded, checked and re-encoded by
:mod:`agora.media.imaging` in a bounded pool of worker threads (a full pool answers 503 at once
rather than queueing without end), stored under content-addressed keys (identical bytes are one
object) and recorded with a ``media.stored`` event.

**URLs.** ``/media/<id>/original`` and ``/media/<id>/small`` work as ``<img src>`` with no
Authorization header. Media of a public post and avatars have plain URLs; anything else
(another visibility, not attached yet) gets a signed URL, valid until ``exp``: an HMAC of the
path and ``exp`` with a key derived from the JWT secret. ``exp`` is rounded up to the next
``AGORA_MEDIA_URL_TTL`` boundary plus one, so a URL stays the same for a while (cached pages and
browsers reuse it) and is good for at least one TTL.

**Serving.** Who may fetch: anyone for a plain URL while the media is public, the holder of an
unexpired signature otherwise; any other caller gets 404, as for media that do not exist (an
expired signature: 403 with a message). Responses carry the stored type, a strong ETag (the
content hash), long ``Cache-Control`` for public immutable content, ``nosniff``, a
``Content-Security-Policy`` that forbids everything (an image needs none of it), and support
single ranges.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import BodyPartReader, web

from agora.config import MediaConfig
from agora.errors import AppError, ErrorCode, forbidden, invalid, not_found
from agora.media import imaging
from agora.media.storage import MediaStorage, StorageError
from agora.media.urls import MediaUrls, Rendition
from agora.protocol.content import MediaOut
from agora.services.presenters import media_out
from agora.storage.media import MediaStore, NewUpload

log = logging.getLogger(__name__)

RENDITIONS: tuple[Rendition, ...] = ("original", "small")
OBJECT_GRACE = 3600.0  # seconds an unused object is kept (an upload in flight claimed it)
CLEANUP_BATCH = 100
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}
MAX_DESCRIPTION = 1500
CHUNK = 64 * 1024
_FOCUS = re.compile(r"\s*(-?[0-9]*\.?[0-9]+)\s*,\s*(-?[0-9]*\.?[0-9]+)\s*")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _too_large(limit: int) -> AppError:
    return AppError(
        ErrorCode.PAYLOAD_TOO_LARGE, f"the file is larger than {limit} bytes", status=413
    )


def _refused(message: str) -> AppError:
    return AppError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, message, status=415)


class MediaService:
    def __init__(
        self,
        store: MediaStore,
        storage: MediaStorage,
        urls: MediaUrls,
        config: MediaConfig,
        process: Callable[[bytes, int], imaging.Processed] | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.urls = urls
        self.config = config
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="agora-media")
        # Uploads being read, processed or waiting for a worker: more are refused at once (503).
        self._slots = asyncio.Semaphore(config.workers * 4)
        library = imaging.DEFAULT if config.library is None else config.library
        self._process = process or (
            lambda data, limit: imaging.process(
                data,
                max_pixels=limit,
                library="pillow" if library == "pillow" else "vips",
            )
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- upload ----------------------------------------------------------------------------------

    async def upload(self, owner_id: int, request: web.Request) -> MediaOut:
        if not request.content_type.startswith("multipart/"):
            raise _refused("send the file as multipart/form-data with a field named file")
        # A slot before the body is read: at most 4 uploads per worker are held in memory
        # (read, waiting or processed) at once; more are refused at once instead of queueing.
        if self._slots.locked():
            raise AppError(
                ErrorCode.UNAVAILABLE,
                "too many uploads are being processed; try again shortly",
                status=503,
                headers={"Retry-After": "2"},
            )
        async with self._slots:
            return await self._upload(owner_id, request)

    async def _upload(self, owner_id: int, request: web.Request) -> MediaOut:
        data: bytes | None = None
        description = ""
        focus = (0.0, 0.0)
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise invalid({"file": "nested multipart bodies are not accepted"})
                if part.name == "file":
                    if data is not None:
                        raise invalid({"file": "one file per upload"})
                    data = await self._read_file(part)
                elif part.name == "description":
                    description = await self._read_text(part, "description", MAX_DESCRIPTION)
                elif part.name == "focus":
                    focus = _focus(await self._read_text(part, "focus", 64))
                else:
                    await part.release()
        except (ValueError, AssertionError, RuntimeError) as exc:
            # aiohttp's multipart reader: no boundary, a broken delimiter, truncated headers.
            raise AppError(
                ErrorCode.VALIDATION_ERROR,
                f"the body is not valid multipart/form-data ({exc})"[:200],
                status=400,
            ) from None
        if data is None:
            raise invalid({"file": "required: the image, as a part named file"})
        processed, keys = await self._run(data)
        original, small = processed.original, processed.small
        await self.store.claim_objects({k: len(r.data) for k, r in keys.items()})
        try:
            await asyncio.gather(
                *(self.storage.put(k, r.data, r.content_type) for k, r in keys.items())
            )
        except StorageError as exc:
            raise AppError(
                ErrorCode.UNAVAILABLE, "media storage is unavailable", status=503
            ) from exc
        original_key, small_key = list(keys) if len(keys) == 2 else [next(iter(keys))] * 2
        upload = await self.store.insert(
            NewUpload(
                owner_id=owner_id,
                content_type=original.content_type,
                original_key=original_key,
                size=len(original.data),
                width=original.width,
                height=original.height,
                small_key=small_key,
                small_type=small.content_type,
                small_size=len(small.data),
                small_width=small.width,
                small_height=small.height,
                blurhash=processed.blurhash,
                description=description,
                focus_x=focus[0],
                focus_y=focus[1],
            )
        )
        return media_out(upload, self.urls, public=False)

    async def _read_file(self, part: BodyPartReader) -> bytes:
        """The file's bytes, counted as they arrive: the read stops past the limit (413), and
        at the first 16 bytes when they are not an image we take (415)."""
        limit = self.config.max_bytes
        buf = bytearray()
        sniffed = False
        while chunk := await part.read_chunk(CHUNK):
            buf += chunk
            if len(buf) > limit:
                raise _too_large(limit)
            if not sniffed and len(buf) >= 16:
                if imaging.sniff(bytes(buf[:64])) is None:
                    raise _refused("the file is not a JPEG, PNG, GIF or WebP image")
                sniffed = True
        if not sniffed:
            raise _refused("the file is not a JPEG, PNG, GIF or WebP image")
        return bytes(buf)

    @staticmethod
    async def _read_text(part: BodyPartReader, name: str, limit: int) -> str:
        raw = bytearray()
        while chunk := await part.read_chunk(CHUNK):
            raw += chunk
            if len(raw) > limit * 4:
                raise invalid({name: f"at most {limit} characters"})
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise invalid({name: "must be UTF-8 text"}) from None
        if len(text) > limit:
            raise invalid({name: f"at most {limit} characters"})
        if "\x00" in text:
            raise invalid({name: "must not contain NUL characters"})
        return text

    def _work(self, data: bytes) -> tuple[imaging.Processed, dict[str, imaging.Rendition]]:
        """In a worker thread: the processing, and the renditions' content-addressed keys
        (hashing a megabyte takes milliseconds, which the event loop should not spend)."""
        processed = self._process(data, self.config.max_pixels)
        original, small = processed.original, processed.small
        return processed, {
            _key(original.data, original.content_type): original,
            _key(small.data, small.content_type): small,
        }

    async def _run(self, data: bytes) -> tuple[imaging.Processed, dict[str, imaging.Rendition]]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, self._work, data)
        except imaging.TooManyPixels as exc:
            raise AppError(ErrorCode.PAYLOAD_TOO_LARGE, str(exc), status=413) from None
        except imaging.Refused as exc:
            raise _refused(str(exc)) from None

    # -- the media job ---------------------------------------------------------------------------

    async def cleanup_once(
        self, grace: float = OBJECT_GRACE, batch: int = CLEANUP_BATCH
    ) -> dict[str, int]:
        """Remove uploads attached to nothing for longer than AGORA_MEDIA_ORPHAN_AGE (each with
        its media.deleted event), then the stored objects no upload uses, older than ``grace``
        (an upload in flight claims its objects before writing them). Any number of nodes may
        run it at once: rows are taken with SKIP LOCKED."""
        uploads = objects = 0
        while (n := await self.store.purge_orphans(self.config.orphan_age, batch)) > 0:
            uploads += n
            if n < batch:
                break
        while True:
            async with self.store.db.transaction("media_collect") as tx:
                keys = await self.store.unused_objects(tx, grace, batch)
                for key in keys:  # the bytes first: the row is locked meanwhile
                    await self.storage.delete(key)
                await self.store.delete_objects(tx, keys)
            objects += len(keys)
            if len(keys) < batch:
                break
        if uploads or objects:
            log.info("media: removed %d unattached uploads, %d unused objects", uploads, objects)
        return {"uploads": uploads, "objects": objects}

    # -- serving ---------------------------------------------------------------------------------

    async def serve(
        self, request: web.Request, media_id: int, rendition: str
    ) -> web.StreamResponse:
        if rendition not in RENDITIONS:
            raise not_found("media")
        access = await self.store.access(media_id)
        if access is None:
            raise not_found("media")
        path = MediaUrls.path(media_id, "original" if rendition == "original" else "small")
        signed = self.urls.check(path, request.query.get("exp"), request.query.get("sig"))
        if signed is False and not access.public:
            raise forbidden("this link has expired; ask for the post or profile again")
        if not signed and not access.public:
            raise not_found("media")
        upload = access.upload
        key, ctype = (
            (upload.original_key, upload.content_type)
            if rendition == "original"
            else (upload.small_key, upload.small_type)
        )
        etag = f'"{key.split(".")[0]}"'
        headers = {
            "Content-Type": ctype,
            "ETag": etag,
            "Cache-Control": (
                "public, max-age=31536000, immutable"
                if access.public and not signed
                else f"private, max-age={int(self.urls.ttl)}"
            ),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Content-Disposition": "inline",
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Accept-Ranges": "bytes",
        }
        if etag in (request.headers.get("If-None-Match") or ""):
            return web.Response(status=304, headers=headers)
        try:
            stored = await self.storage.stat(key)
            if stored is None:
                raise not_found("media")
            span = _range(request.headers.get("Range"), stored.size)
            if span is None:
                body = await self.storage.read(key)
                return web.Response(body=body, headers=headers)
            if not span:
                headers["Content-Range"] = f"bytes */{stored.size}"
                return web.Response(status=416, headers=headers)
            start, end = span[0], span[1]
            body = await self.storage.read(key, start, end)
        except StorageError as exc:
            raise AppError(
                ErrorCode.UNAVAILABLE, "media storage is unavailable", status=503
            ) from exc
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{stored.size}"
        return web.Response(status=206, body=body, headers=headers)


def _key(data: bytes, content_type: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()}.{EXTENSIONS[content_type]}"


def _focus(raw: str) -> tuple[float, float]:
    match = _FOCUS.fullmatch(raw)
    if match:
        x, y = float(match[1]), float(match[2])
        if -1 <= x <= 1 and -1 <= y <= 1:
            return x, y
    raise invalid({"focus": "x,y with each between -1 and 1, like 0.2,-0.5"})


def _range(header: str | None, size: int) -> tuple[int, int] | tuple[()] | None:
    """[start, end) of a single byte range; () when it cannot be satisfied; None: the whole
    (no header, or one we do not serve, such as several ranges)."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if not match or (not match[1] and not match[2]):
        return None
    if not match[1]:  # the last N bytes
        n = int(match[2])
        return (max(0, size - n), size) if n > 0 and size > 0 else ()
    start = int(match[1])
    end = min(int(match[2]) + 1, size) if match[2] else size
    if start >= size or end <= start:
        return ()
    return start, end
