"""Fixtures for the browser tests: Debian's Chromium, driven by Playwright, on the app.

- ``browser``: one headless Chromium for the whole test session, with a fresh
  profile in a temporary directory. Starting it costs about a second, a new
  page about a tenth of that, so each test gets a new page, never a new browser.
- ``serve_app(provider, **config)``: the app on 127.0.0.1 with the test's
  provider, plus a record of every request the server received and a way to
  cut its open streams (a dropped connection, as a proxy restart would do it).
- ``tab``: a fresh page that records console messages, uncaught errors,
  dialogs and requests (see tab.py). When the test fails, the page's
  screenshot goes to ``test-artifacts/``.

One event loop for all of it. Playwright's objects belong to the loop that
made them, and the app must run in the test's loop too, so every test in this
folder runs in the session's loop (``pytest_collection_modifyitems`` below)
while the rest of the suite keeps a fresh loop per test. That is also why
``serve_app`` starts the server itself instead of using ``start_app``: that
fixture is tied to the per-test loop, and it gives no way to add the
request-recording middleware before the app starts.

Without Chromium the tests are skipped with the command that installs it;
with ``REQUIRE_BROWSER=1`` (CI sets it) they fail instead, so a CI machine
without a browser cannot pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Route, async_playwright, expect

from providers.events import Provider
from server import VENDOR_SCRIPTS, Config, make_app
from tests.e2e.tab import OBSERVER_SCRIPT, Tab
from tests.fake_upstream import FakeUpstream

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root in containers, where the sandbox cannot start
    # A test browser talks to nothing but the app: no updates, sync or field trials.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
# Every wait in these tests is bounded: Playwright's default is 30 s, far more
# than anything here needs.
WAIT_MS = 5_000


# --- skip, or fail, without a browser --------------------------------------------------


def require(ready: bool, missing: str, environ: Mapping[str, str] = os.environ) -> None:
    """Skip the test when something the browser tests need is ``missing``.

    With REQUIRE_BROWSER set (to anything but "" or "0") fail instead: in CI a
    skipped browser test would look like a passing one.
    """
    if ready:
        return
    if environ.get("REQUIRE_BROWSER", "") not in ("", "0"):
        pytest.fail(
            f"{missing} (REQUIRE_BROWSER is set, so this fails instead of skipping)",
            pytrace=False,
        )
    pytest.skip(missing)


def htmx_is_installed() -> bool:
    # Without `npm ci` the page loads htmx from a CDN, which tests never reach.
    return all(script.local_file.is_file() for script in VENDOR_SCRIPTS)


# --- one event loop and one browser for the session -------------------------------------

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every test in this folder in the session's event loop (see the docstring)."""
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if pytest_asyncio.is_async_test(item) and E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(session_loop, append=False)


@pytest.fixture(scope="session")
def browser_installed() -> None:
    """Skip (or, with REQUIRE_BROWSER, fail) when Chromium or htmx is missing."""
    require(CHROMIUM.is_file(), f"{CHROMIUM} not found; install it with `apt-get install chromium`")
    require(htmx_is_installed(), "htmx is not in node_modules; run `npm ci`")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(
    browser_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile; Playwright downloads nothing."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    async with async_playwright() as playwright:
        # A persistent context is how Playwright takes a profile directory:
        # launch() refuses --user-data-dir.
        context = await playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context.set_default_timeout(WAIT_MS)
        # The final answer's Copy button writes to the clipboard; tests read it back.
        await context.grant_permissions(["clipboard-read", "clipboard-write"])
        expect.set_options(timeout=WAIT_MS)
        try:
            yield context
        finally:
            await context.close()


# --- the app, with a record of what reached it ----------------------------------------------


@dataclass
class ServedApp:
    """The app on a loopback port, and what the server saw of the browser."""

    server: TestServer
    requests: list[str] = field(default_factory=list)  # "GET /path?query", in order
    open_streams: list[asyncio.Transport] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))

    def stream_requests(self) -> list[str]:
        return [line for line in self.requests if line.startswith("GET /response-stream")]

    def cut_streams(self) -> None:
        """Drop every open stream's TCP connection from the server's side."""
        for transport in self.open_streams:
            transport.close()
        self.open_streams.clear()

    @web.middleware
    async def record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        if request.path == "/response-stream" and request.transport is not None:
            self.open_streams.append(request.transport)
        return await handler(request)


ServeApp = Callable[..., Awaitable[ServedApp]]


@pytest_asyncio.fixture(loop_scope="session")
async def serve_app() -> AsyncIterator[ServeApp]:
    """``await serve_app(provider, **config)``: the app, served until the test ends.

    ``provider`` is a Provider object (a ScriptedProvider, say), or the name of
    one the app builds from its config ("demo", "openai"). Keyword arguments
    override ``Config`` fields. Unlike ``start_app``, the app keeps its real
    defaults (pacing, grace period, limits), so the page behaves as it does
    for a person; only the demo provider runs instantly unless told otherwise.
    """
    servers: list[TestServer] = []

    async def serve(provider: Provider | str | None = None, **overrides: Any) -> ServedApp:
        if isinstance(provider, str):
            overrides["provider"], provider = provider, None
        app = make_app(Config(**{"demo_delay": 0.0, **overrides}), provider=provider)
        served = ServedApp(TestServer(app, host="127.0.0.1"))
        # First in line, so it sees every request; allowed: the app has not started yet.
        app.middlewares.insert(0, served.record)
        # Bounded shutdown: a stream a test left hanging cannot hold up the suite.
        await served.server.start_server(shutdown_timeout=2.0)
        servers.append(served.server)
        return served

    yield serve
    for server in servers:
        await server.close()


@pytest_asyncio.fixture(loop_scope="session")
async def fake_model() -> AsyncIterator[FakeUpstream]:
    """The fake OpenAI-compatible model server of tests/fake_upstream.py.

    Its own ``fake_upstream`` fixture runs in the per-test loop; this one
    serves the same fake in this folder's loop. Serve the app against it with
    ``serve_app("openai", openai=OpenAISettings(base_url=fake_model.base_url, …))``.
    """
    upstream = FakeUpstream()
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server(shutdown_timeout=2.0)
    upstream.base_url = str(server.make_url("/v1"))
    try:
        yield upstream
    finally:
        await server.close()


# --- a fresh page per test ------------------------------------------------------------------

# Anything but the app itself: the tests must never reach a CDN or the internet.
OFFSITE = re.compile(r"^(?!https?://127\.0\.0\.1[:/])[a-z]+://")
CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Any:
    """Keep the test's own outcome where the ``tab`` fixture's teardown can read it."""
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report


@pytest_asyncio.fixture(loop_scope="session")
async def tab(
    browser: BrowserContext, serve_app: ServeApp, request: pytest.FixtureRequest
) -> AsyncIterator[Tab]:
    """A new page that records what happens on it; a screenshot if the test fails.

    It depends on ``serve_app`` so that it closes first: the page's open
    streams end before the servers stop.
    """
    tab = await new_tab(browser, observe=True)
    try:
        yield tab
    finally:
        report = request.node.stash.get(CALL_REPORT, None)
        if report is not None and report.failed:
            await tab.screenshot(artifacts_folder(request), request.node.name)
        await tab.page.close()


async def new_tab(browser: BrowserContext, observe: bool) -> Tab:
    """A new page, with no cookies, that records what happens on it and never
    leaves the machine; with ``observe``, observe.js notes each swap."""
    await browser.clear_cookies()
    page = await browser.new_page()
    tab = Tab(page)
    tab.listen()
    if observe:
        await page.add_init_script(path=OBSERVER_SCRIPT)

    async def refuse_offsite(route: Route) -> None:
        tab.offsite.append(route.request.url)
        await route.abort()

    await page.route(OFFSITE, refuse_offsite)
    return tab


def artifacts_folder(request: pytest.FixtureRequest) -> Path:
    """``test-artifacts/`` at the top of the repository (it is gitignored)."""
    return request.config.rootpath / "test-artifacts"


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    return artifacts_folder(request)
