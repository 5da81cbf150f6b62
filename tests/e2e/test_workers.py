"""The page on `python server.py --workers 2` with Redis: two gunicorn workers behind
one port, so a reload or a Stop may reach the worker that is not generating."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import expect

from tests.e2e.tab import Tab
from tests.soak import expected_answer
from tests.test_workers import app_process


async def ended(tab: Tab) -> None:
    """Until the latest turn's stream ended: a demo answer takes a few seconds."""
    await expect(tab.turn).to_have_class(re.compile(r"\bdone\b"), timeout=30_000)


async def final_answers(tab: Tab) -> list[str]:
    return await tab.turns.locator(".final-container.done .answer-source").all_text_contents()


async def test_a_conversation_on_two_workers_survives_reloads_and_stops(
    tab, redis_server, redis_config
):
    prefix = redis_config["redis_prefix"]
    async with app_process(redis_server, prefix, "--workers", "2", "--demo-delay", "0.03") as (
        base,
        _,
        read_log,
    ):
        await tab.open(base + "/")
        await tab.submit("First question")
        await ended(tab)
        await tab.submit("Second question, reloaded while it streams")
        await expect(tab.answer).to_contain_text("You wrote")
        for _ in range(3):  # each reload may reach either worker
            await tab.page.reload()
            await asyncio.sleep(0.2)
        await ended(tab)
        first = await expected_answer("First question")
        second = await expected_answer(
            "Second question, reloaded while it streams", "First question", first
        )
        assert await final_answers(tab) == [first, second]

        await tab.submit("Third question, stopped")
        await expect(tab.answer).to_contain_text("You wrote")
        await tab.stop_button.click()
        await ended(tab)
        await expect(tab.turn).to_contain_text("You stopped the answer here.")
        assert not tab.problems()
        for _ in range(100):  # gunicorn's own log lines come when they come
            if read_log().count("Booting worker with pid") == 2:
                break
            await asyncio.sleep(0.1)
        assert read_log().count("Booting worker with pid") == 2
