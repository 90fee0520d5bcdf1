"""A TCP proxy between the code and a real service, so a test can cut the network
(asyncpg's ``test_adversity.py`` and aiormq's ``TCPProxy`` do the same)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit, urlunsplit


class TCPProxy:
    """Listens on 127.0.0.1; forwards to ``(host, port)`` or, with ``unix_path``, a Unix socket
    (the embedded engines listen only on those)."""

    def __init__(
        self, target_host: str = "127.0.0.1", target_port: int = 0, unix_path: str | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self.unix_path = unix_path
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.accepting = True

    async def start(self) -> TCPProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.close()
            return
        try:
            if self.unix_path:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            dst.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self.accepting = False
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.accepting = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def proxy_redis(url: str) -> tuple[TCPProxy, str]:
    """A started proxy in front of a Redis URL (TCP or unix://) and the URL that goes through it."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        proxy = TCPProxy(unix_path=parts.path)
    else:
        proxy = TCPProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    return proxy, f"redis://127.0.0.1:{proxy.port}/0"


async def proxy_postgres(dsn: str) -> tuple[TCPProxy, str]:
    """The same for a PostgreSQL DSN (host:port, or a socket directory in ``?host=``)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    user = parts.username or "postgres"
    if "host" in query and query["host"][0].startswith("/"):
        proxy = TCPProxy(unix_path=f"{query['host'][0]}/.s.PGSQL.{parts.port or 5432}")
    else:
        proxy = TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    through = urlunsplit(("postgresql", f"{user}@127.0.0.1:{proxy.port}", parts.path, "", ""))
    return proxy, through
