"""Agora nodes as real processes (`python -m agora serve`), for start-up and shutdown tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProcess:
    def __init__(self, env: dict[str, str], cwd: Path, port: int | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
        # Killed nodes leave leased event deliveries behind: let others take them soon. Rate
        # limits stay on, loose enough that tests registering many users from 127.0.0.1 pass.
        self.env = {
            **clean,
            "AGORA_EVENTS_LEASE": "5",
            "AGORA_RATE_LIMIT_SCALE": "1000",
            **env,
        }
        self.cwd = cwd
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = cwd / f"node-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_within: float = 60.0) -> float:
        """Start and wait for ``/readyz`` 200; return the seconds it took."""
        started = time.monotonic()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agora",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        while time.monotonic() - started < ready_within:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"node not ready within {ready_within}s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; return the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
