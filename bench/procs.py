"""Server processes the bench spawns: start, wait until ready, measure, stop.

Every child asks the kernel to SIGTERM it if the bench dies without cleaning up, and every
command stops its children in ``finally`` (SIGTERM, then SIGKILL after a grace), so neither
Ctrl-C nor an exception leaves a server behind. Children write their logs to the bench's
stderr; stdout stays for the one JSON result.
"""

from __future__ import annotations

import asyncio
import ctypes
import glob
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import uvloop
from aiohttp import web

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A bench command cannot do what was asked; the message says why (exit status 1)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # Linux (the bench reads /proc anyway)


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: one call to a function resolved beforehand, no
    import, lock or logging (the bench has threads: the resolver's, argon2's)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def log(message: str) -> None:
    """Progress for the person running the bench (stderr; stdout is for the JSON result)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB, from ``/proc/<pid>/status`` (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 2)
    raise RuntimeError(f"no VmRSS for pid {pid} (a zombie?)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14 and 15)


def cpu_by_process(names: Iterable[str]) -> dict[tuple[int, str, str], float]:
    """CPU seconds used so far by every process whose command name is one of ``names``, keyed
    by (pid, start time, name): a pid reused between two readings is another process."""
    wanted = set(names)
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, str, str], float] = {}
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path) as fh:
                raw = fh.read()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        if comm in wanted:
            fields = raw.rsplit(")", 1)[1].split()
            key = (int(path.split("/")[2]), fields[19], comm)
            out[key] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def own_cpu_seconds() -> float:
    """User + system CPU time of this (the load) process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


class ServerProcess:
    """One child server listening on 127.0.0.1:``port``."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            list(args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,
            stderr=sys.stderr,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        return rss_mib(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def wait_ready(self, path: str = "/healthz", timeout: float = 60.0) -> None:
        """Poll ``path`` until it answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with status {self.proc.returncode} "
                    "before it was ready (its log is above)"
                )
            if await asyncio.to_thread(_answers_200, self.url + path):
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"{self.name} did not answer 200 on {path} within {timeout:.0f}s")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Safe to call twice."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {grace:.0f}s; killing it")
            self.proc.kill()
            self.proc.wait()


def spawn_module(module: str) -> ServerProcess:
    """Start a baseline server, ``python -m <module> --port P``, on a free port."""
    port = free_port()
    return ServerProcess(
        module.rsplit(".", 1)[-1],
        [sys.executable, "-m", module, "--port", str(port)],
        env=dict(os.environ),
        port=port,
    )


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def settled_rss(
    pid: int, *, interval: float = 1.0, tolerance_mib: float = 0.25, timeout: float = 20.0
) -> float:
    """RSS in MiB once two readings ``interval`` apart differ by at most ``tolerance_mib``."""
    deadline = time.monotonic() + timeout
    last = rss_mib(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)
        now = rss_mib(pid)
        if abs(now - last) <= tolerance_mib:
            return now
        last = now
    return last


def serve_app(app: web.Application, port: int) -> None:
    """Child side: serve ``app`` on 127.0.0.1:``port`` on uvloop until SIGTERM or SIGINT, with
    the settings an Agora node uses (no access log, backlog 2048)."""

    async def main() -> None:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=2048, reuse_address=True).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    uvloop.run(main())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop. SIGTERM cancels it as Ctrl-C does, so its ``finally`` blocks (which
    stop the spawned servers) run either way; the cancellation then propagates to the caller."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    return uvloop.run(guarded())
