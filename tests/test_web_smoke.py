"""The browser harness itself (tests/support/browser.py): Debian's Chromium, driven by
Playwright, against two real nodes. Each node's API reference page loads in a browser with no
console error and no request elsewhere, and the web client's shell page is served by both with
its module script and a Content-Security-Policy that allows no inline script.

Chromium is installed (`apt-get install chromium`) when missing; without it the browser tests
skip, except with AGORA_TEST_BROWSER_REQUIRED=1 (.ci/run), where they fail.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.support.browser import (
    PHONE,
    UserFactory,
    WebCluster,
    allow_console_errors,
    assert_no_console_errors,
    browser_fixture,  # noqa: F401 (the fixture "browser")
    ensure_chromium,
    open_user,
    page_record,
    screenshot,
    web_cluster_fixture,  # noqa: F401 (the fixture "web_cluster")
    web_user_fixture,  # noqa: F401 (the fixture "web_user")
)
from tests.support.node import free_port

# /api/docs names no icon, so Chromium asks for /favicon.ico, which is a 404 (the web client's
# shell page names its icon and has no such request).
FAVICON = r"favicon\.ico"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("node", ["a", "b"])
def test_api_docs_in_chromium(
    web_cluster: WebCluster, web_user: UserFactory, node: str, tmp_path: Path
) -> None:
    base = getattr(web_cluster, node)
    page = web_user(base)
    allow_console_errors(page, FAVICON)
    response = page.goto(f"{base}/api/docs", wait_until="load")
    assert response is not None and response.status == 200
    assert "Agora" in page.title()
    # docs.js has fetched the specification and drawn the endpoints.
    page.wait_for_selector("#api :text('/api/v1/auth/register')")
    assert page.viewport_size == {"width": 1280, "height": 800}
    shot = screenshot(page, f"api-docs-{node}", tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page_record(page).origin == base
    # web_user's teardown fails the test on any console error or request to another host.


def test_phone_context(web_cluster: WebCluster, web_user: UserFactory) -> None:
    page = web_user(web_cluster.a, phone=True)
    allow_console_errors(page, FAVICON)
    page.goto(f"{web_cluster.a}/api/docs")
    assert page.viewport_size == PHONE
    assert page.evaluate("navigator.maxTouchPoints") > 0
    assert page.evaluate("matchMedia('(pointer: coarse)').matches")


def test_browser_is_the_systems_chromium(browser: Browser) -> None:
    """The one `ensure_chromium` found (Debian's package), never one Playwright downloaded."""
    executable = ensure_chromium()
    assert "ms-playwright" not in str(Path(executable).resolve())
    done = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60)
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", browser.version), browser.version
    assert browser.version in done.stdout, (browser.version, done.stdout)


def test_harness_records_what_goes_wrong(web_cluster: WebCluster, browser: Browser) -> None:
    """A console error, an uncaught exception and a request to another host each fail the
    test; a failed request is only reported."""
    page = open_user(browser, web_cluster.a)
    elsewhere = f"http://127.0.0.2:{free_port()}/elsewhere"  # nothing listens
    try:
        allow_console_errors(page, FAVICON)
        page.goto(f"{web_cluster.a}/api/docs")
        assert_no_console_errors(page)
        page.evaluate(
            """(url) => {
                console.error("broken on purpose");
                setTimeout(() => { throw new Error("thrown on purpose"); });
                new WebSocket(url.replace("http:", "ws:"));
                return fetch(url).catch(() => null);
            }""",
            elsewhere,
        )
        page.wait_for_timeout(200)
        record = page_record(page)
        assert "broken on purpose" in record.console_errors, record.report()
        assert any("thrown on purpose" in e for e in record.page_errors), record.report()
        assert sorted(record.foreign_requests) == [
            f"GET {elsewhere}",
            f"WebSocket {elsewhere.replace('http:', 'ws:')}",
        ], record.report()
        assert any(elsewhere in r for r in record.failed_requests), record.report()
        with pytest.raises(pytest.fail.Exception) as failed:
            assert_no_console_errors(page)
        assert "broken on purpose" in str(failed.value)
        assert f"request to another host: GET {elsewhere}" in str(failed.value)
    finally:
        page.context.close()


@pytest.mark.parametrize("node", ["a", "b"])
def test_shell_page_is_served(web_cluster: WebCluster, node: str) -> None:
    base = getattr(web_cluster, node)
    with urllib.request.urlopen(f"{base}/", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers.get_content_type() == "text/html"
        body = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
    assert '<script type="module"' in body
    assert csp, "no Content-Security-Policy on the shell page"
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    scripts = directives.get("script-src", directives.get("default-src"))
    assert scripts is not None, csp
    assert "'unsafe-inline'" not in scripts, csp
    assert "'unsafe-eval'" not in scripts, csp
