"""What a fast model costs the page: swaps per second in a real Chromium.

The app's page at ``/`` (a new, empty chat) is driven as a person would
drive it: the prompt (a directive for the fake upstream, bench/protocol.py)
is typed into the box labelled Prompt and Send is pressed; the prompt becomes
the conversation's first turn, htmx opens its event stream and swaps each
``answer_chunk`` into the answer. A script installed before the page's own
notes every ``htmx:sseMessage`` (the SSE extension fires one after each
swap) with its time and event name. Chromium's own counters (the DevTools
``Performance`` domain) give how long the page's main thread was busy.

Figures, over the span from the first to the last ``answer_chunk`` swap:
``swaps_per_s`` (answer swaps), ``busy_share`` (main-thread task time / span;
1.0 = the page could do nothing else) and ``exact`` (the final answer on the
page is exactly what the upstream sent).

Debian's Chromium (/usr/bin/chromium), driven by Playwright, which
downloads nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from playwright.async_api import BrowserContext, async_playwright

from bench.procs import OtherLoad
from bench.protocol import Directive, answer_is_exact

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the benchmark runs as root in a container: no sandbox there
    # A benchmark browser talks to nothing but the app.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
SWAP_RECORDER = """
window.benchSwaps = [];
document.addEventListener("htmx:sseMessage", (event) => {
  window.benchSwaps.push([performance.now(), event.detail.type]);
});
"""
FINAL_ANSWER = "#response-container .turn .final-container.done"  # the one turn's
#: The answer's exact text inside the final answer: the copy kept for the Copy
#: button when there is one (the shown one may be rendered as Markdown).
ANSWER_TEXT = """final =>
  (final.querySelector(".answer-source") || final.querySelector(".answer-text")).textContent"""
#: The page must show its final answer within the stream's length plus this.
FINISH_MARGIN_MS = 20_000
MS_PER_S = 1000


async def measure(context: BrowserContext, app_base: str, directive: Directive) -> dict:
    """Stream one prompt on a fresh page; the swap rate and main-thread load."""
    page = await context.new_page()
    try:
        await page.add_init_script(SWAP_RECORDER)
        await page.goto(f"{app_base}/")
        devtools = await context.new_cdp_session(page)
        await devtools.send("Performance.enable")
        before = await _task_seconds(devtools)
        await page.get_by_label("Prompt", exact=True).fill(directive.prompt())
        await page.get_by_role("button", name="Send", exact=True).click()
        stream_ms = directive.tokens * directive.delay * MS_PER_S
        final = page.locator(FINAL_ANSWER)
        await final.wait_for(state="attached", timeout=stream_ms + FINISH_MARGIN_MS)
        busy = await _task_seconds(devtools) - before
        swaps = await page.evaluate("window.benchSwaps")
        answer = await final.evaluate(ANSWER_TEXT)
    finally:
        await page.close()
    answer_times = [t for t, kind in swaps if kind == "answer_chunk"]
    span_s = (answer_times[-1] - answer_times[0]) / MS_PER_S if len(answer_times) > 1 else 0.0
    return {
        "swaps_per_s": len(answer_times) / span_s if span_s else None,
        "messages": len(swaps),
        "busy_share": busy / span_s if span_s else None,
        "checked": 1,
        "exact": int(answer_is_exact(answer or "", directive.tokens)),
    }


async def _task_seconds(devtools) -> float:
    metrics = (await devtools.send("Performance.getMetrics"))["metrics"]
    return next(metric["value"] for metric in metrics if metric["name"] == "TaskDuration")


async def swap_rates(apps: dict[str, str], tokens_per_s: float, seconds: float) -> dict:
    """``measure`` on each app (name → base URL), in one browser; and how busy the
    machine was with other work meanwhile (``other_load``, bench/procs.py)."""
    directive = Directive(
        id="browser", tokens=int(tokens_per_s * seconds), delay=1 / tokens_per_s, stamp=False
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-chromium-") as profile:
        load = OtherLoad(marker=profile)  # Chromium's processes are ours too
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                for name, base in apps.items():
                    results[name] = await measure(context, base, directive)
                results["other_load"] = load.share()  # before Chromium's processes end
            finally:
                await context.close()
    return results
