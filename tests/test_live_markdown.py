"""The answer's Markdown is rendered while it streams, and the page it builds is the
final rendering: cut anywhere, resumed anywhere, whatever the model writes."""

import asyncio
import random
import re
import string
from pathlib import Path

import pytest

from live_markdown import (
    _PLAIN_TEXT,
    LIVE_BLOCK_CHARS,
    PLAIN_TEXT_RULES,
    LiveMarkdown,
    make_markdown,
    plain_html,
)
from providers.events import Answer
from tests.answer_dom import AnswerModel, Element, normalized, parse
from tests.conftest import Hang, Pause, ScriptedProvider, post_prompt
from tests.snippet import uid_from_snippet
from tests.sse_client import parse_stream

SAMPLES = Path(__file__).parent / "markdown_samples"
MARKDOWN = make_markdown()
ANSWER = "u0123456789abcdef0123456789abcdef-answer-stream"


def stream(pieces: list[str]) -> tuple[AnswerModel, list[str]]:
    """Feed ``pieces`` one by one; the page they build and the chunks. At every
    step, what the renderer says the page shows is what the page shows; at the
    end, what it gives the final answer is the whole answer rendered."""
    live, page, chunks = LiveMarkdown(MARKDOWN, ANSWER), AnswerModel(ANSWER), []
    for piece in pieces:
        chunks.append(live.feed(piece))
        page.apply(chunks[-1])
        assert normalized(live.html) == page.html()
    chunks.append(live.finish())
    page.apply(chunks[-1])
    assert live.finish() == ""  # finishing twice changes nothing
    whole = live.final_html()
    assert whole is None or whole == MARKDOWN.render("".join(pieces))
    return page, chunks


def final(text: str) -> str:
    return normalized(MARKDOWN.render(text))


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.md")))
def test_cut_at_every_point_the_page_ends_as_the_final_rendering(sample):
    text = (SAMPLES / sample).read_text()
    for cut in range(len(text) + 1):
        page, _ = stream([text[:cut], text[cut:]])
        assert page.html() == final(text), f"cut at {cut}: {text[max(0, cut - 20) : cut]!r}"


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.md")))
def test_fed_a_character_at_a_time_the_page_ends_as_the_final_rendering(sample):
    text = (SAMPLES / sample).read_text()
    page, _ = stream(list(text))
    assert page.html() == final(text)


LINES = [
    "# H\n", "Para *em* **strong** `c`.\n", "\n", "- a\n", "- b\n", "  - nested\n", "1. one\n",
    "2) two\n", "> q\n", "```py\n", "x = 1\n", "```\n", "~~~\n", "| a | b |\n", "|---|---|\n",
    "| 1 | 2 |\n", "text | pipe\n", "---\n", "===\n", "    code\n", "**open\n", "close**\n",
    "[x](y)\n", "  indented\n", "\\*esc\n", "&amp; &#x41;\n", "* \n", "-\n", "+ item\n",
    "10. ten\n", "<b>raw</b>\n", "line  \n", "`tick\n", "_under_ and __dbl__\n",
    "![img](a.png)\n", "   - three space\n", "a\r\n", "b\r", "\n\n\n",
]  # fmt: skip


def test_plain_text_is_shown_as_markdown_it_would_render_it():
    # The renderer skips markdown-it for text without any character where one of
    # the enabled inline rules can start: those rules, and that text, rendered alike.
    assert tuple(MARKDOWN.inline.ruler.get_active_rules()) == PLAIN_TEXT_RULES
    rng = random.Random(7)
    characters = " abz09\t\u00e9\u2028\u4e2d" + string.punctuation
    shown = 0
    for _ in range(3000):
        text = "".join(rng.choice(characters) for _ in range(rng.randint(1, 16))).strip()
        if text and _PLAIN_TEXT.fullmatch(text):
            # Words around it: a paragraph (not a heading, a list…), nothing held back.
            line = f"w {text} w"
            live = LiveMarkdown(MARKDOWN, ANSWER)
            assert live.feed(line + " ") == MARKDOWN.render(line), repr(line)
            shown += 1
    assert shown > 500


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("AT&T & co", "AT&amp;T &amp; co"),
        ("x < y > z", "x &lt; y &gt; z"),
        ("0@7 <i>&'", "0@7 &lt;i&gt;&amp;'"),
        ('say "hi"', "say &quot;hi&quot;"),
        ("&amp;", None),  # an entity
        ("&#65;", None),
        ("<https://example.com>", None),  # autolinks
        ("<a@b.c>", None),
        ("*em*", None),
    ],
)
def test_words_without_markdown_skip_markdown_it(text, html):
    assert plain_html(text) == html
    if html is not None:
        assert MARKDOWN.renderInline(text) == html
        assert MARKDOWN.render(text) == f"<p>{html}</p>\n"


def test_plain_html_is_markdown_its_html_whenever_it_gives_some():
    """Random text rich in the characters that may start something ("&", "<",
    ":", "@", "#", ";"): what ``plain_html`` gives is what markdown-it renders,
    inline and as a one-line paragraph."""
    rng = random.Random(11)
    characters = "&<>:@#;/.\"' ax1_*`[]!" + "aAz09 "
    given = 0
    for _ in range(20_000):
        text = "".join(rng.choice(characters) for _ in range(rng.randint(1, 12)))
        html = plain_html(text)
        if html is not None:
            assert html == MARKDOWN.renderInline(text), repr(text)
            if text.strip() == text and text[0] not in "#>-+=0123456789|":
                assert MARKDOWN.render(text) == f"<p>{html}</p>\n", repr(text)
            given += 1
    assert given > 1000


@pytest.mark.parametrize("seed", range(4))
def test_random_markdown_in_random_pieces_ends_as_the_final_rendering(seed):
    rng = random.Random(seed)
    for _ in range(150):
        text = "".join(rng.choice(LINES) for _ in range(rng.randint(1, 25)))
        if rng.random() < 0.3:
            text = text.rstrip("\n")
        pieces, at = [], 0
        while at < len(text):
            size = rng.randint(1, 9)
            pieces.append(text[at : at + size])
            at += size
        page, _ = stream(pieces)
        assert page.html() == final(text), repr(text)


def test_the_chunks_cost_at_most_half_again_the_final_rendering():
    """Text is sent once: a block grows by appends, and is sent again only when it
    changes (here, a code block getting its colours)."""
    text = (SAMPLES / "guide.md").read_text()
    pieces = re.findall(r"\s*\S+|\s+", text)  # words, as a model sends them
    _, chunks = stream(pieces)
    assert sum(len(c.encode()) for c in chunks) <= 1.5 * len(MARKDOWN.render(text).encode())


def shown(pieces: list[str]) -> str:
    live = LiveMarkdown(MARKDOWN, ANSWER)
    for piece in pieces:
        live.feed(piece)
    return live.html


@pytest.mark.parametrize(
    ("pieces", "html"),
    [
        (["Hello"], "<p>Hello</p>\n"),  # the first word at once
        (["Hello", " **wor"], "<p>Hello</p>\n"),  # an open ** waits for its closer
        (["Hello", " **wor", "ld** and"], "<p>Hello <strong>world</strong> and</p>\n"),
        (["A `co"], "<p>A</p>\n"),
        (["A `code` span"], "<p>A <code>code</code> span</p>\n"),
        (["See [the do"], "<p>See</p>\n"),
        (["```py\nx = 1\n"], '<pre class="code-live" data-lang="py">x = 1\n</pre>\n'),
        (["```py\nx = 1\ny ="], '<pre class="code-live" data-lang="py">x = 1\ny =</pre>\n'),
        (["| a | b |\n"], ""),  # a table's header, perhaps: the next line tells
        (["- one\n- tw"], "<ul>\n<li>one</li>\n</ul>\n"),  # list items show whole
        (["Fish &am"], "<p>Fish</p>\n"),  # an entity being written
    ],
    ids=[
        "first-word", "open-bold-waits", "closed-bold", "open-code-span-waits", "code-span",
        "open-link-waits", "open-code-block", "code-line-being-written", "table-header-waits",
        "list-item-being-written", "entity-being-written",
    ],
)  # fmt: skip
def test_half_finished_constructs_show_sensibly(pieces, html):
    assert shown(pieces) == html


def test_a_dangling_marker_at_the_end_shows_as_written():
    page, _ = stream(["It costs **5", " dollars"])
    assert page.html() == "<p>It costs **5 dollars</p>\n"


def test_a_block_too_long_to_render_live_is_shown_as_its_text():
    line = "- [x" * (LIVE_BLOCK_CHARS // 4) + "\n"
    live = LiveMarkdown(MARKDOWN, ANSWER)
    live.feed(line)
    live.feed(line)
    assert live.html.startswith('<p class="source">- [x- [x')
    assert live.html.count("- [x") == 2 * (LIVE_BLOCK_CHARS // 4)


def test_hostile_markdown_stays_inert_while_it_streams():
    text = (SAMPLES / "hostile.md").read_text()
    for pieces in (list(text), [text]):
        _, chunks = stream(pieces)
        for chunk in chunks:
            for node in parse(chunk):
                if isinstance(node, Element):
                    check_inert(node, top=True)


def check_inert(element: Element, top: bool = False) -> None:
    """Only our own markup: no script, no event handler, no htmx attribute but the
    out-of-band ones this app writes at a chunk's top level, only safe links."""
    assert element.tag not in ("script", "iframe", "object", "embed", "form", "style")
    for name, value in element.attrs:
        assert not name.startswith("on"), (element.tag, name)
        if name == "hx-swap-oob":
            assert top and re.fullmatch(
                rf"(beforeend|outerHTML):#{ANSWER}( > :last-child)*", value or ""
            ), value
        else:
            assert not name.startswith(("hx-", "data-hx", "sse-")), name
        if name in ("href", "src"):
            assert re.match(r"(https?:|[\w./#-]*$)", value or ""), value
    for child in element.children:
        if isinstance(child, Element):
            check_inert(child)


# --- through the app, over real sockets ----------------------------------------------------

MARKDOWN_PIECES = [
    "# Plan\n\n", "Some **bold", "** text", " and `code`.\n\n", "- one\n", "- two\n\n",
    "```python\n", "def f():\n", "    return 1\n", "```\n\n", "| a | b |\n", "|---|---|\n",
    "| 1 | 2 |\n\n", "The end.",
]  # fmt: skip


def slow_markdown() -> ScriptedProvider:
    script: list = []
    for piece in MARKDOWN_PIECES:
        script += [Answer(piece), Pause(0.02)]
    return ScriptedProvider(script)


async def page_after(events) -> AnswerModel:
    page = AnswerModel()
    for event in events:
        if event.event == "answer_chunk":
            page.apply(event.data)
    return page


async def read_events(response, count):
    events = []
    while len(events) < count:
        frame = await response.content.readuntil(b"\n\n")
        events += parse_stream(frame.decode())[0]
    return events


async def test_the_streamed_page_ends_as_the_final_answer_rendered(start_app):
    client = await start_app(provider=slow_markdown(), plain_stream=False)
    uid = await post_prompt(client)
    events, _ = parse_stream(await (await client.get("/response-stream?uid=" + uid)).text())
    page = await page_after(events)
    assert page.html() == final("".join(MARKDOWN_PIECES))
    final_answer = next(e.data for e in events if e.event == "final_answer")
    rendered = re.search(
        r'<div class="answer-rendered">(.*?)</div>\s*<pre class="answer-text', final_answer, re.S
    )
    assert rendered and normalized(rendered.group(1)) == page.html()
    assert '<span class="k">def</span>' in page.html()  # highlighted before the end


@pytest.mark.parametrize("cut_after", [2, 5, 9, 14])
async def test_a_resumed_stream_builds_the_same_page(start_app, cut_after):
    client = await start_app(provider=slow_markdown(), plain_stream=False, grace_period=5)
    uid = await post_prompt(client)
    first = await client.get("/response-stream", params={"uid": uid})
    before = await read_events(first, cut_after)
    first.close()
    await asyncio.sleep(0.05)
    second = await client.get(
        "/response-stream", params={"uid": uid}, headers={"Last-Event-ID": before[-1].id}
    )
    after, _ = parse_stream(await second.text())
    page = await page_after(before + after)
    assert page.html() == final("".join(MARKDOWN_PIECES))


async def test_a_page_rendered_mid_stream_shows_the_blocks_so_far_and_resumes(start_app):
    provider = ScriptedProvider([Answer(p) for p in MARKDOWN_PIECES[:8]] + [Pause(0.3)])
    provider.script += [Answer(p) for p in MARKDOWN_PIECES[8:]]
    client = await start_app(provider=provider, plain_stream=False, grace_period=5)
    response = await client.post("/process_prompt", data={"prompt": "Plan"})
    cid = response.headers["HX-Push-Url"].removeprefix("/c/")
    first = await client.get(
        "/response-stream", params={"uid": uid_from_snippet(await response.text())}
    )
    await first.content.readuntil(b"def f")
    first.close()  # the reload

    thread = await (await client.get(f"/c/{cid}")).text()
    after = re.search(r'sse-connect="/response-stream\?uid=(\w+)&amp;after=(\d+)"', thread)
    assert after is not None
    page = AnswerModel()
    page.answer.children = parse(answer_element(thread, after.group(1)))
    assert "<h1>Plan</h1>" in page.html() and "code-live" in page.html()
    resumed = await client.get(
        "/response-stream", params={"uid": after.group(1), "after": after.group(2)}
    )
    events, _ = parse_stream(await resumed.text())
    for event in events:
        if event.event == "answer_chunk":
            page.apply(event.data)
    assert page.html() == final("".join(MARKDOWN_PIECES))


def answer_element(page: str, uid: str) -> str:
    """The inner HTML of the answer's element in a rendered page."""
    tag = re.compile(rf'<div id="{uid}-answer-stream"(?:\s+[\w-]+="[^"]*")*>')
    opening = tag.search(page)
    assert opening is not None
    start = opening.end()
    depth, at = 1, start
    for tag in re.finditer(r"<(/?)div\b[^>]*>", page[start:]):
        depth += -1 if tag.group(1) else 1
        if depth == 0:
            at = start + tag.start()
            break
    return page[start:at]


async def test_a_failed_stream_keeps_its_blocks(start_app):
    provider = ScriptedProvider([Answer("# Title\n\nHalf a para"), Hang()])
    client = await start_app(provider=provider, plain_stream=False, max_duration=0.3)
    uid = await post_prompt(client)
    events, _ = parse_stream(await (await client.get("/response-stream?uid=" + uid)).text())
    page = await page_after(events)
    assert page.html() == final("# Title\n\nHalf a para")
    assert [e.event for e in events][-3:] == ["final_answer", "error", "close"]
