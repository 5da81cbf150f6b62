"""The answer's Markdown is rendered safely: raw HTML stays text, unsafe links are
refused, code is highlighted with classes, links open a new tab."""

import pytest

from live_markdown import make_markdown
from providers.events import Answer
from tests.conftest import ScriptedProvider, post_prompt, read_stream

render = make_markdown().render

CASES = [
    ("paragraphs", "one\n\ntwo", "<p>one</p>\n<p>two</p>\n"),
    ("emphasis", "**bold** and _it_", "<p><strong>bold</strong> and <em>it</em></p>\n"),
    ("list", "- a\n- b", "<ul>\n<li>a</li>\n<li>b</li>\n</ul>\n"),
    ("table", "|a|b|\n|-|-|\n|1|2|", "<td>1</td>"),
    ("link-opens-a-new-tab", "[site](https://example.org)",
     '<a href="https://example.org" target="_blank" rel="noopener noreferrer">site</a>'),
    ("raw-html-stays-text", "<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
    ("script-stays-text", "<script>alert(1)</script>", "&lt;script&gt;"),
    ("javascript-link-refused", "[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
    ("data-link-refused", "[x](data:text/html,hi)", "<p>[x](data:text/html,hi)</p>"),
    ("fenced-code-highlighted-with-its-language-and-copy", "```py\nprint(1)\n```",
     '<div class="code-block"><div class="code-head"><span class="lang">py</span>'
     '<button type="button" class="copy" data-copy="code">Copy</button></div>'
     '<pre><code class="language-py"><span class="nb">print</span><span class="p">(</span>'
     '<span class="mi">1</span><span class="p">)</span>\n</code></pre></div>\n'),
    ("unknown-language-is-escaped-not-highlighted", "```brainfuck\n<+>\n```",
     '<pre><code class="language-brainfuck">&lt;+&gt;\n</code></pre>'),
    ("hostile-language-name-is-escaped", '```"><script>x\ny\n```',
     '<span class="lang">&quot;&gt;&lt;script&gt;x</span>'),
    ("aligned-table-uses-classes-not-inline-styles", "|a|b|\n|:-:|-:|\n|1|2|",
     '<td class="align-center">1</td>\n<td class="align-right">2</td>'),
    ("indented-code-with-copy", "    x = 1\n",
     'data-copy="code">Copy</button></div><pre><code>x = 1\n'),
]  # fmt: skip


@pytest.mark.parametrize(("text", "html"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_markdown_rendering(text, html):
    assert html in render(text)


async def test_final_answer_is_rendered_and_keeps_the_exact_text_for_copy(start_app):
    answer = "# Title\n\nSome `code` and **bold**.\n\n<b>not html</b>\n"
    client = await start_app(provider=ScriptedProvider([Answer(answer)]))
    uid = await post_prompt(client)
    _, events, _ = await read_stream(client, uid)
    final = next(e.data for e in events if e.event == "final_answer")
    chunks = [e.data for e in events if e.event == "answer_chunk"]

    assert "<h1>Title</h1>" in final and "<code>code</code>" in final
    assert "&lt;b&gt;not html&lt;/b&gt;" in final and "<b>" not in final
    assert 'data-copy="answer"' in final
    assert "# Title" in chunks[0]  # while streaming, plain text: no re-render per token


def test_rendered_markdown_never_carries_an_inline_style():
    """The page's CSP forbids inline styles: markdown must not produce any."""
    text = "|l|c|r|\n|:-|:-:|-:|\n|1|2|3|\n\n**b** `c` [x](https://e.org)\n\n```\nx\n```"
    assert "style=" not in render(text)
