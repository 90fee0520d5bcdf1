"""The web client end to end: Debian's Chromium driven by Playwright, on a two-node cluster.

The browser is Debian's ``chromium`` package (``/usr/bin/chromium``) launched through
``executable_path``: never a browser Playwright downloads (``playwright install`` is never run).
It is installed (``apt-get install chromium``) when missing; without it these tests skip, except
with AGORA_TEST_BROWSER_REQUIRED=1 (.ci/run), where they fail.

Playwright's sync API: the tests are plain functions and the nodes are separate processes. Each
user is a browser context of its own (its own cookies and storage), and every page it opens
records its console errors, uncaught exceptions, failed requests and any request to a host other
than the node's; ``assert_no_console_errors`` (run by ``web_user`` at teardown) fails the test on
any of them but the failed requests, which only explain.

A test module imports the fixtures it uses (by their functions' names: the fixtures are named
``browser``, ``web_cluster`` and ``web_user``, and an import under those names would be shadowed
by the tests' arguments)::

    from tests.support.browser import browser_fixture, web_cluster_fixture, web_user_fixture

(each import with ``# noqa: F401``: pytest finds fixtures among a module's names.)
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    ViewportSize,
    WebSocket,
    sync_playwright,
)

from tests.conftest import JWT_SECRET
from tests.support.debian import ensure_program
from tests.support.node import NodeProcess
from tests.support.services import ServiceSet

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
REQUIRED_ENV = "AGORA_TEST_BROWSER_REQUIRED"

# Headless (Playwright's headless=True) plus what this machine needs: no sandbox (root in a
# container), no GPU, and none of Chromium's own traffic (updates, sync, field trials, QUIC
# probes), which a closed network refuses and which would show up as failed requests.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
DESKTOP = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)


def _find() -> str | None:
    return next((p for p in ("/usr/bin/chromium",) if os.access(p, os.X_OK)), None) or (
        shutil.which("chromium")
    )


def ensure_chromium() -> str:
    """Chromium's path, installed from Debian's package when missing (tests/support/debian.py)."""
    return ensure_program("chromium", _find, REQUIRED_ENV)


# ---------------------------------------------------------------------------------------------
# Pages that remember what went wrong in them


@dataclass
class PageRecord:
    origin: str  # scheme://host:port of the node the page was opened for
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def problems(self) -> list[str]:
        """What fails the test: console errors (but the allowed ones), uncaught exceptions,
        requests to another host."""
        console = [m for m in self.console_errors if not any(p.search(m) for p in self.allowed)]
        return (
            [f"console error: {m}" for m in console]
            + [f"uncaught: {m}" for m in self.page_errors]
            + [f"request to another host: {m}" for m in self.foreign_requests]
        )

    def report(self) -> str:
        lines = self.problems() + [f"request failed: {m}" for m in self.failed_requests]
        return "\n  ".join([f"page for {self.origin}:", *lines])


_RECORDS: weakref.WeakKeyDictionary[Page, PageRecord] = weakref.WeakKeyDictionary()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _foreign(record: PageRecord, url: str) -> bool:
    """Not the node's: any http(s)/ws(s) URL whose host:port differs (data:, blob:, about:
    and the like are the page's own)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        return False
    return parts.netloc != urlsplit(record.origin).netloc


def record_page(page: Page, origin: str) -> PageRecord:
    """Start recording, in every page of ``page``'s context (the user's pop-ups too), console
    errors, uncaught exceptions, failed requests and requests to anything but ``origin``."""
    record = PageRecord(_origin(origin))
    context = page.context

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            where = msg.location
            at = f" ({where['url']}:{where['lineNumber']})" if where.get("url") else ""
            record.console_errors.append(f"{msg.text}{at}")

    def on_request(request: Request) -> None:
        if _foreign(record, request.url):
            record.foreign_requests.append(f"{request.method} {request.url}")

    def on_request_failed(request: Request) -> None:
        record.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

    def on_websocket(ws: WebSocket) -> None:
        if _foreign(record, ws.url):
            record.foreign_requests.append(f"WebSocket {ws.url}")

    context.on("console", on_console)
    context.on("weberror", lambda error: record.page_errors.append(str(error.error)))
    context.on("request", on_request)
    context.on("requestfailed", on_request_failed)
    for each in context.pages:
        each.on("websocket", on_websocket)
    context.on("page", lambda opened: opened.on("websocket", on_websocket))
    _RECORDS[page] = record
    return record


def page_record(page: Page) -> PageRecord:
    return _RECORDS[page]


def allow_console_errors(page: Page, *patterns: str) -> None:
    """Console errors the test expects (regular expressions, searched): Chromium logs every
    4xx/5xx answer to a fetch as "Failed to load resource: the server responded with a status
    of 401 (Unauthorized)", so a test of a refused sign-in allows that one."""
    _RECORDS[page].allowed.extend(re.compile(p) for p in patterns)


def assert_no_console_errors(page: Page) -> None:
    """Fail on any console error, uncaught exception or request to another host recorded in
    ``page`` (failed requests are listed in the message too)."""
    record = _RECORDS[page]
    if record.problems():
        pytest.fail(record.report(), pytrace=False)


def open_user(browser: Browser, base_url: str, *, phone: bool = False) -> Page:
    """A new user: a browser context of its own (desktop 1280x800, or a 390x844 touch phone)
    and a page in it that records its errors (``assert_no_console_errors``). Nothing is
    loaded yet: ``page.goto(base_url + "/")``. Close it with ``page.context.close()``."""
    if phone:
        context = browser.new_context(
            viewport=PHONE,
            is_mobile=True,
            has_touch=True,
            device_scale_factor=3,
        )
    else:
        context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    page = context.new_page()
    record_page(page, base_url)
    return page


def screenshot(page: Page, name: str, directory: Path | None = None) -> Path:
    """``docs/screenshots/<name>.png`` (or ``directory/<name>.png``): the viewport, as the
    README shows it."""
    target = (directory or SCREENSHOTS) / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=False, animations="disabled")
    return target


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Browser]:
    """Debian's Chromium, headless, for one test module (each user a context of its own).
    Module-scoped rather than session-scoped: Playwright's sync API keeps an event loop of its
    own, which is better not left around while the asynchronous suites run."""
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


UserFactory = Callable[..., Page]


@pytest.fixture(name="web_user")
def web_user_fixture(browser: Browser) -> Iterator[UserFactory]:
    """``web_user(base_url, phone=False) -> Page``: ``open_user`` for this test; at teardown
    each page is checked (``assert_no_console_errors``) and its context closed."""
    pages: list[Page] = []

    def open_one(base_url: str, *, phone: bool = False) -> Page:
        page = open_user(browser, base_url, phone=phone)
        pages.append(page)
        return page

    yield open_one
    reports = [_RECORDS[p].report() for p in pages if _RECORDS[p].problems()]
    for page in pages:
        page.context.close()
    if reports:
        pytest.fail("\n".join(reports), pytrace=False)


@dataclass
class WebCluster:
    """Two node processes sharing the database, a Redis prefix and a media directory."""

    nodes: list[NodeProcess]
    media_dir: Path

    @property
    def a(self) -> str:
        return self.nodes[0].url

    @property
    def b(self) -> str:
        return self.nodes[1].url

    def running(self) -> None:
        """Both nodes up (a test before may have stopped one)."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                node.start()


@pytest.fixture(scope="module", name="web_cluster")
def web_cluster_fixture(
    tmp_path_factory: pytest.TempPathFactory,
    services: ServiceSet,
    database_url: str,
    redis_prefix: str,
) -> Iterator[WebCluster]:
    """Two real nodes (``python -m agora serve``), ``.a`` and ``.b`` their base URLs: one
    database, one Redis prefix, one media directory (an upload through one is served by the
    other), the suite's loose rate limits and no WebSocket message limit."""
    work = tmp_path_factory.mktemp("web")
    media = work / "media"
    media.mkdir()
    env = {
        "AGORA_DATABASE_URL": database_url,
        "AGORA_REDIS_URL": services.redis_url,
        "AGORA_REDIS_PREFIX": f"{redis_prefix}web{secrets.token_hex(3)}:",
        "AGORA_JWT_SECRET": JWT_SECRET,
        "AGORA_MEDIA_DIR": str(media),
        "AGORA_CLUSTER_HEARTBEAT": "0.3",
        "AGORA_CLUSTER_NODE_TIMEOUT": "2",
        "AGORA_PRESENCE_DEBOUNCE": "0.5",
        "AGORA_WS_RATE_LIMIT": "0",
    }
    nodes = [NodeProcess({**env, "AGORA_NODE_ID": name}, work) for name in ("web-a", "web-b")]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: n.start(), nodes))
        yield WebCluster(nodes, media)
    finally:
        for node in nodes:
            node.kill()
