"""The real nginx with deploy/nginx.conf, run under a temporary prefix for tests.

The config is the shipped one; only what has to differ on a test machine is rewritten (the user,
pid, logs, temp paths, the port, the worker count), each rewrite checked to have applied, and
the node list is deploy/nginx-upstream.compose.conf with 127.0.0.1 ports for the Compose names.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.debian import ensure_program

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nginx.conf"
UPSTREAM = ROOT / "deploy" / "nginx-upstream.compose.conf"
REQUIRED_ENV = "AGORA_TEST_NGINX_REQUIRED"


def _find() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def ensure_nginx() -> str:
    """nginx's path, installed from Debian's package when missing (tests/support/debian.py)."""
    return ensure_program("nginx", _find, REQUIRED_ENV)


def _rewrite(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, f"deploy/nginx.conf: expected one match of {pattern!r}, found {count}"
    return new


class Nginx:
    def __init__(self, prefix: Path, node_ports: list[int], port: int) -> None:
        self.binary = ensure_nginx()
        self.prefix = prefix
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        prefix.mkdir(parents=True, exist_ok=True)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "temp" / sub).mkdir(parents=True, exist_ok=True)
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        text = CONF.read_text()
        text = _rewrite(text, r"^user .*;$", f"user {user} {group};")
        text = _rewrite(text, r"^worker_processes .*;$", "worker_processes 2;")
        text = _rewrite(text, r"^pid .*;$", f"pid {prefix}/nginx.pid;")
        text = _rewrite(text, r"^error_log .*;$", f"error_log {prefix}/error.log info;")
        text = _rewrite(text, r"^worker_rlimit_nofile .*;$", "worker_rlimit_nofile 4096;")
        text = _rewrite(text, r"^(\s+worker_connections) .*;$", r"\1 1024;")
        text = _rewrite(
            text, r"^(\s+access_log) /var/log/nginx/access.log", rf"\1 {prefix}/access.log"
        )
        text = _rewrite(text, r"^(\s+listen) 80;$", rf"\1 127.0.0.1:{port};")
        temps = "".join(
            f"    {kind}_temp_path {prefix}/temp/{sub};\n"
            for kind, sub in (
                ("client_body", "body"),
                ("proxy", "proxy"),
                ("fastcgi", "fastcgi"),
                ("uwsgi", "uwsgi"),
                ("scgi", "scgi"),
            )
        )
        text = _rewrite(text, r"^http \{\n", "http {\n" + temps)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(text)
        upstream = UPSTREAM.read_text()
        for name, node_port in zip(("node1", "node2"), node_ports, strict=True):
            upstream = _rewrite(
                upstream, rf"^server {name}:8080 ", f"server 127.0.0.1:{node_port} "
            )
        (prefix / "agora-upstream.conf").write_text(upstream)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _args(self, *more: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
                "-c", str(self.conf), *more]  # fmt: skip

    def check(self) -> str:
        """``nginx -t``: its output, asserting the config is valid."""
        done = subprocess.run(self._args("-t"), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stderr

    def start(self, within: float = 10.0) -> None:
        self.proc = subprocess.Popen(self._args("-g", "daemon off;"))
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nginx exited: {self.error_log}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nginx did not listen within {within}s: {self.error_log}")

    @property
    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""

    @property
    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        """Fast shutdown (SIGTERM to the master, which ends its workers); SIGKILL past 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
