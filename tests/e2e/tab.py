"""One browser tab on the app, and everything it reported while a test used it.

A `Tab` wraps a Playwright page. It keeps what a person would notice only by
accident (console messages, uncaught errors, alert dialogs, extra requests)
and, through ``observe.js``, what the response area showed and when. Tests
then ask plain questions: what did the answer look like over time, was the
stream closed, did anything go wrong in the console.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import ConsoleMessage, Dialog, Error, Locator, Page, Request, expect

OBSERVER_SCRIPT = Path(__file__).with_name("observe.js")

# Console errors the browser logs even when the app does everything right
# (measured with htmx 2.0.11, htmx-ext-sse 2.2.4 and Chromium). Tests allow
# them by name, only where they are expected.
#
# When the server refuses a prompt (422, 413, 409…) the page shows our readable
# message next to the prompt box, and Chromium still logs its own "Failed to
# load resource" line about the status. No page code can silence it.
REFUSAL_STATUS_LINE = re.compile(
    r"^Failed to load resource: the server responded with a status of (409|413|422|429)\b"
)
# An `event: error` from the server is shown correctly, but since `error` is
# also the name of EventSource's own failure event, it reaches htmx-ext-sse's
# `onerror` as well, which logs the event object with console.error.
SSE_ERROR_EVENT_LINE = re.compile(r"^\[object MessageEvent\]$")


@dataclass
class Tab:
    """A page plus its records; made fresh for each test by the ``tab`` fixture."""

    page: Page
    console: list[ConsoleMessage] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    offsite: list[str] = field(default_factory=list)  # refused: not the app (conftest)

    def listen(self) -> None:
        # Handlers are methods: Playwright cannot attach to built-ins like list.append.
        self.page.on("console", self._record_console)
        self.page.on("pageerror", self._record_page_error)
        self.page.on("dialog", self._dismiss)
        self.page.on("request", self._record_request)

    async def _dismiss(self, dialog: Dialog) -> None:
        # With a listener Playwright no longer dismisses dialogs itself; an open
        # alert() would block the page, so note it and close it.
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    def _record_console(self, message: ConsoleMessage) -> None:
        self.console.append(message)

    def _record_page_error(self, error: Error) -> None:
        self.page_errors.append(str(error))

    def _record_request(self, request: Request) -> None:
        self.requests.append(request.url)

    # --- what the person does ---------------------------------------------------------

    async def open(self, url: str) -> None:
        await self.page.goto(url)

    async def submit(self, prompt: str) -> None:
        """Type a prompt into the form and press Send, as a person would."""
        await self.prompt_box.fill(prompt)
        await self.send_button.click()

    async def ask(self, prompt: str) -> None:
        """Submit a prompt and wait until its new turn has ended."""
        before = await self.turns.count()
        await self.submit(prompt)
        await expect(self.turns).to_have_count(before + 1)
        await self.turn_ended()

    async def send_with_enter(self, *lines: str) -> None:
        """Type a prompt key by key, Shift+Enter between ``lines``, then press Enter."""
        await self.prompt_box.click()
        for number, line in enumerate(lines):
            if number:
                await self.prompt_box.press("Shift+Enter")
            await self.prompt_box.press_sequentially(line)
        await self.prompt_box.press("Enter")

    # --- what the person sees ---------------------------------------------------------

    @property
    def prompt_box(self) -> Locator:
        return self.page.get_by_label("Prompt", exact=True)

    @property
    def send_button(self) -> Locator:
        return self.page.get_by_role("button", name="Send", exact=True)

    @property
    def refusal(self) -> Locator:
        """A refused prompt's message, next to the prompt box (role=alert)."""
        return self.page.locator("#prompt-error").get_by_role("alert")

    @property
    def response(self) -> Locator:
        """The thread: every turn of the conversation."""
        return self.page.locator("#response-container")

    @property
    def turns(self) -> Locator:
        return self.response.locator("article.turn")

    @property
    def turn(self) -> Locator:
        """The latest turn: what the locators below look in."""
        return self.turns.last

    @property
    def answer(self) -> Locator:
        """The answer: the streaming div, then the final answer's exact text."""
        return self.turn.locator(".answer-live, .answer-text")

    @property
    def final(self) -> Locator:
        return self.turn.locator(".final-container.done")

    @property
    def alert(self) -> Locator:
        """The latest turn's error line (role=alert); refusals are in ``refusal``."""
        return self.turn.get_by_role("alert")

    @property
    def status(self) -> Locator:
        """The latest turn's status line (role=status)."""
        return self.turn.get_by_role("status")

    @property
    def stop_button(self) -> Locator:
        return self.turn.get_by_role("button", name="Stop", exact=True)

    async def uid(self) -> str:
        """The uid of the latest turn, from its element's id (``turn-{uid}``)."""
        element_id = await self.turn.get_attribute("id")
        assert element_id is not None and element_id.startswith("turn-"), element_id
        return element_id.removeprefix("turn-")

    async def turn_ended(self) -> None:
        """Until the latest turn's stream ended (static/app.js marks the turn done).

        Right after Send, Regenerate or Edit the latest turn may still be the
        old one, already done: wait for the new turn first (``ask`` does).
        """
        await expect(self.turn).to_have_class(re.compile(r"\bdone\b"))
        # The final answer may still be settling: htmx gives a swapped-in element
        # the old one's attributes for its settle delay (20 ms), then its own.
        await expect(self.page.locator(".htmx-swapping, .htmx-settling")).to_have_count(0)

    async def timeline(self) -> list[dict[str, Any]]:
        """Each visible state of thought, answer and error line, in order (observe.js)."""
        return await self.page.evaluate("window.e2e.timeline")

    async def answer_steps(self) -> list[str]:
        """Every text the answer showed, in order, its white space collapsed: a
        rendered answer shows Markdown's text, not its source's spaces."""
        return [" ".join(text.split()) for text in await self.seen("answer") if text.strip()]

    async def seen(self, part: str) -> list[str]:
        """Every text ``part`` (thought, answer or error) showed, in order, no repeats."""
        texts: list[str] = []
        for entry in await self.timeline():
            text = entry[part]
            if text is not None and (not texts or texts[-1] != text):
                texts.append(text)
        return texts

    async def sse_events(self) -> list[dict[str, Any]]:
        """The SSE extension's open/error/close events and swap errors, in order."""
        return await self.page.evaluate("window.e2e.sse")

    async def wait_until(self, expression: str, timeout_s: float = 10.0) -> None:
        """Poll a JavaScript expression until it is true, for at most ``timeout_s``.

        Not page.wait_for_function: Playwright compiles its predicate with
        eval() inside the page, which the app's Content-Security-Policy forbids.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await self.page.evaluate(expression):
            if loop.time() > deadline:
                raise AssertionError(f"not true within {timeout_s} s: {expression}")
            await asyncio.sleep(0.05)

    async def wait_until_stream_closed(self, *, for_any_reason: bool = False) -> None:
        """Until htmx-ext-sse closed a stream because the server sent `close`.

        ``for_any_reason``: or because the stream's element left the page,
        which is how a stream ends when something replaced the response area.
        """
        reason = "" if for_any_reason else " && e.type === 'message'"
        await self.wait_until(f"window.e2e.sse.some(e => e.name === 'htmx:sseClose'{reason})")

    # --- what went wrong on the way ---------------------------------------------------

    def stream_requests(self) -> list[str]:
        return [url for url in self.requests if "/response-stream" in url]

    def console_errors(self, *allowed: re.Pattern[str]) -> list[str]:
        """Console errors and warnings, except the ``allowed`` ones."""
        return [
            f"{message.type}: {message.text}"
            for message in self.console
            if message.type in ("error", "warning")
            and not any(pattern.search(message.text) for pattern in allowed)
        ]

    def problems(self, *allowed: re.Pattern[str]) -> list[str]:
        """Everything a quiet, healthy page would not have: for ``assert not …``."""
        return [
            *self.console_errors(*allowed),
            *(f"uncaught: {error}" for error in self.page_errors),
            *(f"dialog opened: {dialog}" for dialog in self.dialogs),
            *(f"request left the machine: {url}" for url in self.offsite),
        ]

    async def screenshot(self, folder: Path, name: str) -> Path:
        """Save the whole page as ``folder/name.png`` (Playwright makes the folder)."""
        path = folder / (re.sub(r"[^\w.-]+", "_", name) + ".png")
        await self.page.screenshot(path=path, full_page=True)
        return path
