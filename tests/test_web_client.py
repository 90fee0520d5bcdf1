"""The web client's session and its budget, in Chromium (tests/support/browser.py).

- Signing up keeps the refresh token where no script reaches it (an HttpOnly cookie; nothing in
  localStorage, sessionStorage or document.cookie), a reload resumes the session, signing out
  ends it, and a signed-out visitor's page makes no failing request.
- The access token is renewed before it expires (a node whose tokens live 70 s), in two tabs
  of one browser, and both stay signed in.
- A real outage: the page's node stops and comes back; the page reconnects by itself and syncs
  what it missed, and sends what was typed meanwhile once.
- The issue's benchmark: time to first render of the feed, and the JavaScript shipped, reported
  (the byte budget, 100 KB uncompressed, is asserted; the time is reported, never asserted).
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from agora.handlers.web import STATIC
from tests.conftest import JWT_SECRET
from tests.support.api import PASSWORD, unique
from tests.support.browser import (
    PHONE,
    UserFactory,
    WebCluster,
    allow_console_errors,
    browser_fixture,  # noqa: F401 (the fixture "browser")
    page_record,
    record_page,
    web_cluster_fixture,  # noqa: F401 (the fixture "web_cluster")
    web_user_fixture,  # noqa: F401 (the fixture "web_user")
)
from tests.support.node import NodeProcess
from tests.support.services import ServiceSet

pytestmark = pytest.mark.slow

SCRIPT_BUDGET = 100 * 1024  # bytes of JavaScript, uncompressed (issue 14)


def sign_up(page: Page, base: str, username: str) -> None:
    page.goto(base + "/")
    page.get_by_role("button", name="I am new here").click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@example.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()


def rest(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}/api/v1{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def test_the_session_is_out_of_reach_of_script_and_survives_a_reload(
    web_cluster: WebCluster, web_user: UserFactory
) -> None:
    page = web_user(web_cluster.a)
    username = unique("sess")
    sign_up(page, web_cluster.a, username)
    storage = page.evaluate(
        "() => ({local: localStorage.length, session: sessionStorage.length,"
        " cookie: document.cookie})"
    )
    assert storage == {"local": 0, "session": 0, "cookie": "agora_session=1"}
    refresh = next(c for c in page.context.cookies() if c["name"] == "agora_refresh")
    assert refresh["httpOnly"] and refresh["sameSite"] == "Strict"
    assert refresh["path"] == "/api/v1/auth/web"

    page.reload()
    me = page.get_by_role("link", name=username)
    expect(me).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"].startswith("agora_")]
    page.reload()  # signed out: no session to resume, and no refused request to log
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")
    expect(page.get_by_role("link", name=username)).to_be_visible()


def test_the_sign_in_screen_fits_a_phone(web_cluster: WebCluster, web_user: UserFactory) -> None:
    page = web_user(web_cluster.b, phone=True)
    page.goto(web_cluster.b + "/")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


@pytest.fixture(scope="module")
def short_lived_tokens(
    tmp_path_factory: pytest.TempPathFactory,
    services: ServiceSet,
    database_url: str,
    redis_prefix: str,
) -> Iterator[str]:
    """A node whose access tokens live 70 s: the client renews them 60 s before, every 10 s."""
    node = NodeProcess(
        {
            "AGORA_DATABASE_URL": database_url,
            "AGORA_REDIS_URL": services.redis_url,
            "AGORA_REDIS_PREFIX": f"{redis_prefix}webttl{secrets.token_hex(3)}:",
            "AGORA_JWT_SECRET": JWT_SECRET,
            "AGORA_ACCESS_TOKEN_TTL": "70",
        },
        tmp_path_factory.mktemp("webttl"),
    )
    node.start()
    try:
        yield node.url
    finally:
        node.kill()


def test_the_access_token_is_renewed_before_it_expires_in_every_tab(
    short_lived_tokens: str, web_user: UserFactory
) -> None:
    base = short_lived_tokens
    first = web_user(base)
    username = unique("renew")
    sign_up(first, base, username)
    second = first.context.new_page()  # a second tab: same cookies, its own access token
    second.goto(base + "/")
    expect(second.get_by_role("link", name=username)).to_be_visible()

    renewals: list[str] = []
    first.context.on(
        "response",
        lambda r: renewals.append(str(r.status)) if r.url.endswith("/auth/web/refresh") else None,
    )
    deadline = time.monotonic() + 40
    while len(renewals) < 4 and time.monotonic() < deadline:
        first.wait_for_timeout(500)
    assert len(renewals) >= 4 and set(renewals) == {"200"}, renewals
    # Both tabs still act as the user: their tokens (renewed in turn) are good.
    for tab in (first, second):
        me = tab.evaluate(
            """async () => {
                const { api } = await import("/static/lib/api.js");
                return (await api("GET", "/users/me")).username;
            }"""
        )
        assert me == username
        expect(tab.get_by_role("button", name="Sign out")).to_be_visible()


def test_time_to_first_render_of_the_feed_and_script_shipped(
    web_cluster: WebCluster,
    web_user: UserFactory,
    browser: Browser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Reported (see the README's Benchmarks): for a signed-in user with a feed of 20 posts, the
    time from navigation to the feed drawn (app.js marks it), cold and warm, and the bytes of
    JavaScript the page loaded and the client ships."""
    base = web_cluster.a
    page = web_user(base)
    username = unique("perf")
    sign_up(page, base, username)
    token = rest(base, "POST", "/auth/login", {"login": username, "password": PASSWORD})
    for n in range(20):
        rest(
            base,
            "POST",
            "/posts",
            {"text": f"post {n}", "visibility": "friends"},
            token["access_token"],
        )
    mark = "performance.getEntriesByName('agora:rendered:feed')[0].startTime"
    # Cold: a returning user's first visit with an empty cache (a new browser context, signed
    # in beforehand by a request of its own: a login of its own, as sharing a refresh cookie
    # would be a reuse). Warm: reloads, the modules revalidated (304).
    cold = []
    for _ in range(3):
        context = browser.new_context(viewport=page.viewport_size)
        signed_in = context.request.post(
            f"{base}/api/v1/auth/web/login", data={"login": username, "password": PASSWORD}
        )
        assert signed_in.ok, signed_in.text()
        fresh = context.new_page()
        record_page(fresh, base)
        fresh.goto(base + "/")
        expect(fresh.get_by_text("post 19")).to_be_visible()
        cold.append(fresh.evaluate(mark))
        breakdown = fresh.evaluate(
            """() => Object.fromEntries([
                ["page", performance.getEntriesByType("navigation")[0].responseEnd],
                ...performance.getEntriesByType("resource")
                  .filter((e) => /auth\\/web\\/refresh|\\/feed|app\\.js|feed\\.js/.test(e.name))
                  .map((e) => [new URL(e.name).pathname, [Math.round(e.startTime),
                                                         Math.round(e.responseEnd)]])])"""
        )
        assert not page_record(fresh).problems(), page_record(fresh).report()
        context.close()
    warm = []
    for _ in range(3):
        page.reload()
        expect(page.get_by_text("post 19")).to_be_visible()
        warm.append(page.evaluate(mark))
    # The modules the feed page loaded (by name: a revalidated one reports no body size), and
    # every module the client has; each is served as it is on disk.
    loaded = page.evaluate(
        """() => performance.getEntriesByType("resource")
            .map((e) => new URL(e.name).pathname).filter((p) => p.endsWith(".js"))"""
    )
    shipped = {
        str(p.relative_to(STATIC)): p.stat().st_size for p in sorted(Path(STATIC).rglob("*.js"))
    }
    feed_modules = sorted({path.removeprefix("/static/") for path in loaded})
    assert "app.js" in feed_modules and "screens/feed.js" in feed_modules, feed_modules
    report = {
        "feed_first_render_ms": {
            "cold": [round(r) for r in cold],
            "warm": [round(r) for r in warm],
            "cold_breakdown_ms": breakdown,  # [start, end] of what the last cold run waited on
        },
        "script_loaded_for_feed_bytes": sum(shipped[m] for m in feed_modules),
        "feed_modules": feed_modules,
        "script_shipped_bytes": sum(shipped.values()),
        "script_files": shipped,
    }
    with capsys.disabled():  # shown in every run's output, as the benchmarks print theirs
        print("\nweb client:", json.dumps(report))
    expect(page.get_by_text("post 19")).to_be_visible()
    assert report["script_shipped_bytes"] < SCRIPT_BUDGET, report


def test_the_client_reconnects_after_its_node_restarts_and_misses_nothing(
    web_cluster: WebCluster, web_user: UserFactory
) -> None:
    """A real outage, not an emulated one: the node under the page stops (SIGTERM: its sockets
    close with 1001) and comes back on the same address a few seconds later. The page retries
    by itself with backoff, then syncs: the messages sent meanwhile through the other node show
    in order, and the one typed during the outage is sent once, with its client_id."""
    home, other = web_cluster.nodes[1], web_cluster.a
    page = web_user(home.url)
    # While the node is down the page's retries and requests fail, as they must.
    allow_console_errors(page, "WebSocket connection to", "Failed to load resource", "ERR_")
    me = unique("back")
    sign_up(page, home.url, me)
    mine = rest(other, "POST", "/auth/login", {"login": me, "password": PASSWORD})
    friend = rest(
        other,
        "POST",
        "/auth/register",
        {"username": unique("fr"), "email": f"{unique('fr')}@example.test", "password": PASSWORD},
    )
    request = rest(
        other, "POST", "/friends/requests", {"user_id": friend["user"]["id"]}, mine["access_token"]
    )
    rest(other, "POST", f"/friends/requests/{request['id']}/accept", {}, friend["access_token"])
    cid = rest(
        other,
        "POST",
        "/conversations",
        {"member_ids": [mine["user"]["id"]]},
        friend["access_token"],
    )["id"]

    def say(text: str) -> None:
        rest(
            other,
            "POST",
            f"/conversations/{cid}/messages",
            {"text": text, "client_id": secrets.token_hex(8)},
            friend["access_token"],
        )

    page.goto(f"{home.url}/#/chat/{cid}")
    thread = page.get_by_role("region", name="Chat history")
    say("before the outage")
    expect(thread.get_by_text("before the outage", exact=True)).to_be_visible()

    assert home.stop() == 0
    expect(page.get_by_role("status").filter(has_text="Connecting")).not_to_have_count(0)
    for n in range(3):
        say(f"missed {n}")
    box = page.get_by_role("textbox", name="Message")
    box.fill("typed during the outage")
    box.press("Enter")
    home.start()

    for text in ("missed 0", "missed 1", "missed 2"):
        expect(thread.get_by_text(text, exact=True)).to_be_visible(timeout=30_000)
    bubbles = [t.strip() for t in thread.locator(".bubble").all_inner_texts()]
    assert bubbles.index("missed 0") < bubbles.index("missed 1") < bubbles.index("missed 2")
    mine_sent = thread.get_by_role("listitem").filter(
        has=page.get_by_text("typed during the outage", exact=True)
    )
    expect(mine_sent).to_contain_text("Sent", timeout=30_000)
    stored = rest(
        other, "GET", f"/conversations/{cid}/messages?limit=100", None, friend["access_token"]
    )["items"]
    assert [m["text"] for m in stored].count("typed during the outage") == 1
