"""Markdown rendered while the answer streams, sent as appends.

An answer is Markdown, so the page shows it rendered (paragraphs, lists, code
blocks, tables) while it grows, not only at the end. The page keeps the answer
being written as a row of *blocks* inside ``#{uid}-answer-stream``
(templates/stream.html). Every ``answer_chunk`` is HTML that htmx puts into
that row in up to three ways, in this order:

1. **The last block changed** (out of band): a replacement for it
   (``hx-swap-oob="outerHTML:#… > :last-child"``), when new text changes what
   was shown (a code block gets its colours when its closing fence arrives, a
   paragraph turns out to be a table's header), or an append deeper inside it
   (``beforeend`` into a nested list).
2. **New blocks** (out of band): appended to the answer (``beforeend``).
3. **More of the last block** (the chunk's own content): the listener appends
   it to the last block, or to a table's body.

A block is sent once and then grows by appends; only a change sends it again.
That keeps the bytes on the wire linear in the answer (sending the open block
again with every chunk would make them grow with its square), and it makes the
last streamed state equal to the final rendering, block for block, so nothing
jumps when the final answer replaces it.

How text becomes blocks:

- Each time a line ends, the lines of the open block go through markdown-it:
  every top-level block but the last is finished (text that comes later cannot
  change it), the last is the open block. Code, table rows and the items of a
  simple list take shorter paths that look at the new line only, so a long
  block costs time in proportion to its length; a block's first line of plain
  words (no Markdown in it, the most common line) is a paragraph without
  markdown-it.
- The line being written is shown at once when it is paragraph text (up to
  where no ``**``, `` ` `` or ``[`` is still open: ``**bo`` waits for its
  ``**``), and inside a code block (escaped as it comes; highlighted when the
  block closes). A line that may be the start of a list, a table or a heading
  waits for its end, a few words.
- All text is escaped by markdown-it, or as markdown-it escapes it when it has
  no Markdown in it (``plain_html``; raw HTML stays text; ``javascript:`` links
  are refused). Markup comes only from markdown-it, Pygments and here.

A block longer than ``LIVE_BLOCK_CHARS`` (other than code, a table or a simple
list) is shown as its source from then on, and rendered once at the end.
"""

from __future__ import annotations

import functools
import html
import itertools
import re
from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.utils import unescapeAll
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore, inline, text_join
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

# --- rendering: markdown-it with highlighted code and safe links --------------------------

COPY_CODE_BUTTON = '<button type="button" class="copy" data-copy="code">Copy</button>'

#: The fence languages that get colours. The model picks a fence's language,
#: so only these common ones reach Pygments: some of its rarer lexers have had
#: regular expressions that take seconds on crafted input.
HIGHLIGHTED = frozenset({
    "bash", "c", "c++", "cpp", "cs", "csharp", "css", "diff", "docker", "dockerfile", "go",
    "html", "ini", "java", "javascript", "js", "json", "jsx", "kotlin", "lua", "make",
    "makefile", "php", "powershell", "ps1", "py", "python", "python3", "r", "rb", "ruby", "rs",
    "rust", "scala", "sh", "shell", "sql", "swift", "toml", "ts", "tsx", "typescript", "xml",
    "yaml", "yml", "zsh",
})  # fmt: skip
#: Longer code is shown without colours: Pygments is pure Python, and this runs
#: in the server's event loop while other answers stream.
HIGHLIGHT_MAX_CHARS = 20_000
_FORMATTER = HtmlFormatter(nowrap=True)  # bare <span class="k">: the classes, no inline style


def make_markdown() -> MarkdownIt:
    """The answer's renderer: CommonMark and tables, code blocks with colours, a
    language label and a Copy button, links that open a new tab. Raw HTML in the
    answer stays text (``html: False``) and markdown-it refuses unsafe link
    schemes such as ``javascript:``."""
    markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
    assert isinstance(markdown.renderer, RendererHTML)
    markdown.add_render_rule("fence", render_fence)
    markdown.add_render_rule("code_block", render_fence)
    markdown.add_render_rule("link_open", render_link)
    for rule in ("th_open", "td_open"):
        markdown.add_render_rule(rule, aligned_cell)
    return markdown


def render_fence(renderer: RendererHTML, tokens: Sequence[Token], index: int, *_: Any) -> str:
    token = tokens[index]
    info = unescapeAll(token.info).strip() if token.type == "fence" else ""
    return code_block(token.content, info.split(maxsplit=1)[0] if info else "")


def code_block(code: str, language: str) -> str:
    """A finished code block: its language, a Copy button, the code (with colours
    when its language is one of ``HIGHLIGHTED``)."""
    lang = html.escape(language)
    label = f'<span class="lang">{lang}</span>' if language else ""
    css_class = f' class="language-{lang}"' if language else ""
    return (
        f'<div class="code-block"><div class="code-head">{label}{COPY_CODE_BUTTON}</div>'
        f"<pre><code{css_class}>{colour(code, language)}</code></pre></div>\n"
    )


def colour(code: str, language: str) -> str:
    """The code as HTML: Pygments' spans with CSS classes (never inline styles,
    which the Content-Security-Policy forbids), or just escaped."""
    if language.lower() in HIGHLIGHTED and len(code) <= HIGHLIGHT_MAX_CHARS:
        try:
            lexer = get_lexer_by_name(language.lower(), stripnl=False, ensurenl=False)
        except ClassNotFound:
            pass
        else:
            return highlight(code, lexer, _FORMATTER)
    return html.escape(code, quote=False)


def highlight_css() -> str:
    """The colours of highlighted code, light and dark (served as /highlight.css)."""
    light = HtmlFormatter(style="default").get_style_defs(".code-block pre")
    dark = HtmlFormatter(style="github-dark").get_style_defs(".code-block pre")
    return f"{light}\n@media (prefers-color-scheme: dark) {{\n{dark}\n}}\n"


def render_link(
    renderer: RendererHTML, tokens: Sequence[Token], index: int, options: Any, env: Any
) -> str:
    """A link opens a new tab, so following it never loses the conversation;
    ``noopener noreferrer``: the new page gets no handle on this one, nor its URL."""
    tokens[index].attrSet("target", "_blank")
    tokens[index].attrSet("rel", "noopener noreferrer")
    return renderer.renderToken(tokens, index, options, env)


def aligned_cell(
    renderer: RendererHTML, tokens: Sequence[Token], index: int, options: Any, env: Any
) -> str:
    """A table cell aligned by a class, not by markdown-it's inline style: the
    Content-Security-Policy (style-src 'self') forbids inline styles."""
    cell = tokens[index]
    style = cell.attrs.pop("style", None)
    if isinstance(style, str) and style.startswith("text-align:"):
        cell.attrSet("class", "align-" + style.removeprefix("text-align:"))
    return renderer.renderToken(tokens, index, options, env)


# --- rendering while it streams -----------------------------------------------------------


@functools.cache
def block_parser(markdown: MarkdownIt) -> MarkdownIt:
    """``markdown`` (the rules ``make_markdown`` enables) without its inline
    rules: where blocks begin and end, at a fraction of the cost (a block's
    inline text is parsed when it is rendered). One per renderer, shared."""
    blocks = MarkdownIt("commonmark", markdown.options).enable("table")
    return blocks.disable(["inline", "text_join"])


#: Past this many characters, an open block that has to go through markdown-it
#: whole at each line's end (a paragraph, a nested list, a quote) is shown as
#: its source instead: that work grows with the square of the block's length.
LIVE_BLOCK_CHARS = 4_000
#: The most text of a paragraph's line kept back while a ``**`` or `` ` `` is
#: open; past it, the text is shown as it is and fixed when the line ends.
MAX_HELD_CHARS = 200

#: Where a line of code ends a code block: its fence again, at least as long.
_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})")
#: A simple list item: a marker, a space, text that is no other block.
_LIST_ITEM = re.compile(r"^([-*+]|\d{1,9}[.)]) +\S")
#: The start of a line that may begin something other than a paragraph: wait
#: for the line's end (or for enough of it to tell).
_MAYBE_BLOCK = re.compile(
    r"""^[ ]{0,3}(?:
        \#{1,6}(?:\s|$)        # a heading
      | [>|]                   # a quote, a table row
      | ([-*+_=])[ \t]*(?:\1[ \t]*)*$   # a list marker, a rule or an underline, so far
      | [-*+](?:\s|$)          # a list item
      | \d{1,9}(?:[.)](?:\s|$)|$)  # a numbered item, or digits so far
      | (`{3,}|~{3,}|`{1,2}$|~{1,2}$)  # a code fence, or its start
      | \[[^\]]*(?:\]:|$)      # a link reference definition, or its start
      | [ ]{4}                 # indented code
    )""",
    re.VERBOSE,
)
#: The end of a paragraph's text that may still change meaning: an entity or an
#: escape being written, a run of ``*`` or backticks that may grow.
_UNFINISHED_TAIL = re.compile(r"(?:&#?\w*|\\|[*_`~!\[]+)$")
#: Text with none of the characters where an inline rule of ours can start
#: (``PLAIN_TEXT_RULES``: escapes, code spans, emphasis, links and images,
#: autolinks and entities; markdown-it's text rule also stops at characters such
#: as "@", "$" or "~" for rules we do not enable), but for "&" and "<": they
#: start something only as ``_MAY_START`` says (raw HTML stays text here).
_PLAIN_TEXT = re.compile(r"[^\n!*\[\\\]_`]*")
#: "&" before "#" or a name and ";" (an entity, "&amp;"), or "<…>" with ":" or
#: "@" in it (an autolink, "<https://…>" or "<a@b.c>"). More than those, never less.
_MAY_START = re.compile(r"&(?:#|[A-Za-z][A-Za-z0-9]*;)|<[^<>]*[:@][^<>]*>")
#: The inline rules ``_PLAIN_TEXT`` is drawn for (tests/test_live_markdown.py
#: checks that make_markdown() enables exactly these).
PLAIN_TEXT_RULES = ("text", "newline", "escape", "backticks", "emphasis", "link", "image",
                    "autolink", "html_inline", "entity")  # fmt: skip
#: Where the constructs ``first_open`` looks for can begin.
_CONSTRUCT_START = re.compile(r"[\\`*_\[]")
_TRAILING_CLOSER = re.compile(r"</([a-z][a-z0-9]*)>\s*$")
_TAG = re.compile(r"<(/?)([a-z][a-z0-9]*)[^>]*?(/?)>")
_VOID = frozenset({"br", "hr", "img", "input", "wbr"})
_BLOCK_TAG = re.compile(r"<(?:p|ul|ol|h[1-6]|pre|blockquote|table|hr|div)\b")


class LiveMarkdown:
    """Turns an answer's text, piece by piece, into ``answer_chunk`` data.

    ``feed()`` takes the next piece and returns the chunk (``""`` when nothing
    new can be shown yet); ``finish()`` ends the answer; ``html`` is what the
    page shows after the chunks so far (for a page rendered mid-stream).
    """

    def __init__(self, markdown: MarkdownIt, answer_id: str) -> None:
        self._md = markdown
        self._blocks_md = block_parser(markdown)
        self._answer = answer_id
        self._env: dict[str, Any] = {}  # link reference definitions, once seen
        # The blocks as they are now: finished ones, then the open one ("": none).
        self._done: list[str] = []
        self._open = ""
        self._open_source = ""  # the lines it was rendered from
        self._kind = ""  # the open block's: "paragraph", "code", "table", "list", "source", …
        # Its source: complete lines (blank lines before it included), the line
        # being written, and how much of that line the open block shows.
        self._lines: list[str] = []
        self._line = ""
        self._line_shown = 0
        self._after_cr = False  # a piece ended with "\r": a "\n" next is the same line break
        # The open code block's closing fence, indent and lines; a table's head; a list's marker.
        self._fence = ""
        self._fence_indent = 0
        self._code: list[str] = []
        self._language = ""
        self._table_head = ""
        self._list_marker = ""
        # The page: how many blocks it has, and its last one as it shows it.
        self._page_blocks = 0
        self._page_last = ""
        # What the open paragraph grew by at its end since the page's last chunk, when
        # nothing else changed (``_grow``); the next chunk is that, without a diff.
        self._appended: list[str] = []
        self._appended_to = ""  # the open paragraph after those growths

    def final_html(self) -> str | None:
        """After ``finish()``: the whole answer rendered, which is what the page shows,
        block for block. None when the page shows something else: a block too long to
        render live, or a link whose definition came after it (``[docs][1]`` …
        ``[1]: https://…``), which only a rendering of the whole answer gets right."""
        if self._env.get("references") or self._kind == "source":
            return None
        return self.html

    @property
    def html(self) -> str:
        """The answer as the page shows it after the chunks so far."""
        shown = self._done[: self._page_blocks]
        if self._page_blocks > len(self._done):
            shown = [*self._done, self._page_last]
        elif shown:
            shown[-1] = self._page_last
        return "".join(shown)

    def feed(self, text: str) -> str:
        """The next piece of the answer; the chunk that shows it (or "")."""
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
        if self._kind == "source":
            self._grow(html.escape(text, quote=False))
            return self._chunk()
        *ended, self._line = (self._line + text).split("\n")
        for line in ended:
            self._end_line(line + "\n")
        self._show_line()
        return self._chunk()

    def finish(self) -> str:
        """The answer is complete: the chunk that shows the rest, every block final."""
        if self._kind != "source":
            parsed = False
            if self._line:
                line, self._line = self._line, ""
                parsed = self._end_line(line)  # the last line, as it is: without a line break
            # Parsed just now, the open block is final already, unless its last line
            # was held back as a table's header row, perhaps (then it shows nothing).
            if self._lines and not self._fence and not (parsed and self._open):
                self._parse(final=True)
            if self._fence:
                self._close_code()
            elif self._kind != "source":
                self._finish_open()
            self._lines = []  # (a second finish() finds nothing more to do)
        return self._chunk()

    # --- lines ------------------------------------------------------------------------------

    def _end_line(self, line: str) -> bool:
        """A whole line: it goes to the open code block, table or list, or through
        markdown-it; whether it did that (``_parse``)."""
        shown, self._line_shown = self._line_shown, 0
        if self._fence:
            closing = _FENCE.match(line)
            if (
                closing
                and closing.group(2).startswith(self._fence)
                and not line[closing.end() :].strip()
            ):
                self._close_code()
            else:
                self._add_code(line, shown)
            return False
        self._lines.append(line)
        if not line.strip() or self._table_row(line) or self._list_item(line):
            return False  # (a blank line changes nothing yet: the next line tells)
        self._parse()
        return True

    def _parse(self, final: bool = False) -> None:
        """The open block's lines through markdown-it: every top-level block but the
        last is finished; the last is the open block (``final``: it ends here too)."""
        source = "".join(self._lines)
        if len(source) > LIVE_BLOCK_CHARS:
            if not final:
                self._show_source(source)
            return  # at its end it stays as shown: the final answer renders it once
        if len(self._lines) == 1 and self._words_alone(source):
            return
        tokens = self._blocks_md.parse(source, self._env)
        starts = [i for i, t in enumerate(tokens) if t.level == 0 and t.nesting >= 0 and t.map]
        if not starts:
            return  # blank lines (or a link reference definition) so far
        for start, end in itertools.pairwise(starts):
            self._open = self._render_block(tokens[start:end])
            self._finish_open()
        last = tokens[starts[-1]]
        assert last.map is not None
        open_fence = last.type == "fence" and not self._fence_closed(last)
        self._lines = self._lines[last.map[0] :]
        self._table_head = self._list_marker = ""
        if open_fence:
            self._open_code(last)
            return
        self._open = self._render_block(tokens[starts[-1] :])
        self._open_source = "".join(self._lines[: last.map[1] - last.map[0]])
        self._kind = last.type.removesuffix("_open")
        header = len(self._lines) == 1 and self._lines[0].lstrip(" ").startswith("|")
        if self._kind == "paragraph" and header and not final:
            self._open = ""  # a table's header row, perhaps: the next line tells
        if last.type == "table_open":
            self._table_head = "".join(self._lines[:2])
        elif last.type in ("bullet_list_open", "ordered_list_open") and self._simple_list():
            self._list_marker = last.markup

    def _words_alone(self, line: str) -> bool:
        """A block's first line that no block can start and with no inline rule in it
        is a paragraph of its words: made the open block without markdown-it. (A
        next line goes through markdown-it with it: it may make it a table, say.)"""
        if line[:1].isspace() or _MAYBE_BLOCK.match(line):
            return False
        paragraph = plain_paragraph(line.strip())
        if paragraph is None:
            return False
        self._open, self._open_source, self._kind = paragraph, line, "paragraph"
        self._table_head = self._list_marker = ""
        return True

    def _render_block(self, tokens: Sequence[Token]) -> str:
        """A block of the open lines; one that closes unchanged since it was
        rendered as the open block is not rendered again."""
        first = tokens[0]
        assert first.map is not None
        if self._open and self._open_source == "".join(self._lines[first.map[0] : first.map[1]]):
            return self._open
        return self._render(tokens)

    def _render(self, tokens: Sequence[Token]) -> str:
        """HTML from block tokens (``_blocks_md``'s): their inline text parsed, then rendered."""
        if len(tokens) == 3 and tokens[0].type == "paragraph_open":  # one line of words?
            paragraph = plain_paragraph(tokens[1].content)
            if paragraph is not None:
                return paragraph
        state = StateCore("", self._md, self._env)
        state.tokens = list(tokens)
        inline(state)  # the inline text of each block, as MarkdownIt.parse() would
        text_join(state)
        return self._md.renderer.render(state.tokens, self._md.options, self._env)

    def _finish_open(self) -> None:
        if self._open:
            self._done.append(self._open)
        self._open = self._kind = self._table_head = self._list_marker = ""

    # --- the line being written -------------------------------------------------------------

    def _show_line(self) -> None:
        """Show what can be shown of the line being written."""
        if self._fence:
            self._show_code_line()
        elif self._line and self._paragraph_text():
            self._show_paragraph_text()

    def _paragraph_text(self) -> bool:
        """Whether the line being written is paragraph text: it continues the open
        paragraph, or starts a new one after a blank line, and starts no other block."""
        if self._line_shown:
            return True
        if _MAYBE_BLOCK.match(self._line):
            return False
        continues = self._kind == "paragraph" and self._open and self._lines[-1].strip()
        # After a blank line; indented, it may still belong to an open list.
        starts = (not self._lines or not self._lines[-1].strip()) and (
            not self._line[0].isspace() or self._kind in ("", "paragraph", "heading")
        )
        return bool(continues or starts)

    def _show_paragraph_text(self) -> None:
        if len(self._open) > LIVE_BLOCK_CHARS:  # one long line: each piece costs a copy
            self._show_source("".join(self._lines))
            return
        line, start = self._line, self._line_shown
        end = shown_end(line, start)
        if end <= start:
            return
        text = line[start:end]
        if start == 0:
            text = text.lstrip()
        rendered = plain_html(text)
        if rendered is None:
            rendered = self._md.renderInline(text, self._env)
        if start == 0 and self._kind == "paragraph" and self._lines and self._lines[-1].strip():
            # The next line of the open paragraph: after a soft (or a hard) line break.
            hard = self._lines[-1].endswith("  \n") or self._lines[-1].endswith("\\\n")
            self._grow(("<br />\n" if hard else "\n") + rendered)
        elif start == 0:  # a new paragraph: whatever was open before the blank line is done
            if any(earlier.strip() for earlier in self._lines):
                self._parse(final=True)
                self._finish_open()
            self._lines = []
            self._open, self._kind = f"<p>{rendered}</p>\n", "paragraph"
        else:
            self._grow(rendered)
        self._line_shown = end

    def _grow(self, content: str) -> None:
        """Add HTML to the end of the open block (before its closing tag)."""
        before = self._open
        at = before.rindex("</")
        self._open = before[:at] + content + before[at:]
        if self._kind == "paragraph" and (
            before is self._page_last or (self._appended and before is self._appended_to)
        ):
            self._appended.append(content)
            self._appended_to = self._open
        else:
            self._appended.clear()

    # --- code, table rows, list items: the open block grows by the new line only -------------

    def _open_code(self, fence: Token) -> None:
        info = unescapeAll(fence.info).strip()
        self._language = info.split(maxsplit=1)[0] if info else ""
        self._fence, self._kind = fence.markup, "code"
        self._fence_indent = len(self._lines[0]) - len(self._lines[0].lstrip(" "))
        self._code = [fence.content]
        lang = f' data-lang="{html.escape(self._language)}"' if self._language else ""
        code = html.escape(fence.content, quote=False)
        self._open = f'<pre class="code-live"{lang}>{code}</pre>\n'

    def _add_code(self, line: str, shown: int) -> None:
        """A line of code; its first ``shown`` characters are on the page already."""
        code = _dedent(line, self._fence_indent)
        self._code.append(code)
        already = len(_dedent(line[:shown], self._fence_indent)) if shown else 0
        self._grow(html.escape(code[already:], quote=False))

    def _show_code_line(self) -> None:
        """Show the code line being written, unless it may be the closing fence."""
        line, start = self._line, self._line_shown
        indent = len(line) - len(line.lstrip(" "))
        if len(line) == start or indent == len(line):
            return  # nothing new, or only spaces so far
        if indent < 4 and line[indent] == self._fence[0]:
            return  # the closing fence, perhaps: known at the line's end
        already = len(_dedent(line[:start], self._fence_indent)) if start else 0
        self._grow(html.escape(_dedent(line, self._fence_indent)[already:], quote=False))
        self._line_shown = len(line)

    def _close_code(self) -> None:
        self._open = code_block("".join(self._code), self._language)
        self._fence, self._code, self._lines = "", [], []
        self._finish_open()

    def _table_row(self, line: str) -> bool:
        """If the open block is a table and ``line`` is its next row, add the row."""
        if not self._table_head or not line.strip() or not self._lines[-2].strip():
            return False
        tokens = self._blocks_md.parse(self._table_head + line, self._env)
        if sum(1 for t in tokens if t.level == 0 and t.nesting == 1) != 1:
            return False  # the line ends the table
        rendered = self._render(tokens)
        row = rendered[rendered.find("<tbody>\n") + 8 : rendered.find("</tbody>")]
        if "<tbody>" not in rendered or not row:
            return False
        if "<tbody>" in self._open:
            self._grow_in("</tbody>", row)
        else:
            self._grow_in("</table>", f"<tbody>\n{row}</tbody>\n")
        return True

    def _list_item(self, line: str) -> bool:
        """If the open block is a simple list (one line per item) and ``line`` is its
        next item, add the item."""
        match = _LIST_ITEM.match(line)
        if not self._list_marker or not match or match.group(1)[-1] != self._list_marker[-1]:
            return False
        if not self._lines[-2].strip():
            return False  # after a blank line: the list is loose now, every item changes
        rendered = self._md.render(line, self._env)
        item = rendered[rendered.find("<li>") : rendered.rfind("</li>") + 6]
        if not item.startswith("<li>") or _BLOCK_TAG.search(item):
            return False
        self._grow_in("</ol>" if "<ol" in rendered[:4] else "</ul>", item)
        return True

    def _grow_in(self, closing_tag: str, content: str) -> None:
        at = self._open.rindex(closing_tag)
        self._open = self._open[:at] + content + self._open[at:]

    def _simple_list(self) -> bool:
        """Whether the open list has one line per item: plain items, no nesting."""
        inner = self._open[self._open.index(">") + 1 : self._open.rindex("</")]
        return not _BLOCK_TAG.search(inner) and len(self._lines) == inner.count("<li>")

    def _fence_closed(self, fence: Token) -> bool:
        assert fence.map is not None
        first, end = fence.map
        if end - first < 2 or end > len(self._lines):
            return False
        closing = _FENCE.match(self._lines[end - 1])
        return bool(
            closing
            and closing.group(2).startswith(fence.markup)
            and not self._lines[end - 1][closing.end() :].strip()
        )

    def _show_source(self, source: str) -> None:
        """Too long to render live: from here on the answer is shown as its text."""
        self._open = f'<p class="source">{html.escape(source + self._line, quote=False)}</p>\n'
        self._kind, self._lines, self._line = "source", [], ""

    # --- the chunk: what changed since the last one -----------------------------------------

    def _chunk(self) -> str:
        """Compare the blocks now with the page's; the HTML that brings the page up to date."""
        blocks = len(self._done) + bool(self._open)
        if blocks == 0:
            return ""
        appended, self._appended = self._appended, []
        if appended and self._appended_to is self._open and self._page_blocks == blocks:
            # Only the page's paragraph grew, at its end: the growth is the chunk
            # (what _change would find, without comparing the two).
            self._page_last = self._open
            return "".join(appended)
        last_now = self._open if blocks > len(self._done) else self._done[-1]
        if blocks == self._page_blocks and last_now is self._page_last:
            return ""  # nothing new to show

        def block(index: int) -> str:
            return self._done[index] if index < len(self._done) else self._open

        out_of_band, in_band = "", ""
        known = min(self._page_blocks, blocks)  # (a block never goes away)
        if known:
            now = block(known - 1)
            if now != self._page_last:
                out_of_band, in_band = self._change(self._page_last, now)
        new = "".join(block(i) for i in range(known, blocks))
        if new and known:
            out_of_band += f'<div hx-swap-oob="beforeend:#{self._answer}">{new}</div>'
        elif new:
            in_band = new  # the page has no block yet: the answer itself takes them
        self._page_blocks, self._page_last = blocks, last_now
        return out_of_band + in_band

    def _change(self, page: str, now: str) -> tuple[str, str]:
        """How the page's last block becomes ``now``: an append (in band, to the block
        or a table's body; out of band, deeper in it) or, failing that, a replacement."""
        closers = spine(page)
        # The listener's target: the last block, or its body if it is a table with one.
        in_band = 1 if [tag for tag, _ in closers[:2]] == ["table", "tbody"] else 0
        if len(now) > len(page):
            for depth in range(len(closers) - 1, -1, -1):
                at = closers[depth][1]
                head, tail = page[:at], page[at:]
                if now.startswith(head) and now.endswith(tail):
                    added = now[at : len(now) - len(tail)]
                    if balanced(added) and (depth == in_band or "<tr" not in added):
                        # (Out of band, rows would lose their tags: a <div> cannot hold them.)
                        if depth == in_band:
                            return "", added
                        selector = f"#{self._answer} > :last-child" + " > :last-child" * depth
                        return f'<div hx-swap-oob="beforeend:{selector}">{added}</div>', ""
        return with_attribute(now, f'hx-swap-oob="outerHTML:#{self._answer} > :last-child"'), ""


def plain_html(text: str) -> str | None:
    """``text`` as markdown-it renders it inline, when nothing in it is Markdown
    (``_PLAIN_TEXT``, ``_MAY_START``): the text, escaped as markdown-it escapes
    it. None for text that needs markdown-it. (Words and punctuation are most of
    an answer, and markdown-it takes some 10 µs even for a few of them.)"""
    if not _PLAIN_TEXT.fullmatch(text) or _MAY_START.search(text):
        return None
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def plain_paragraph(text: str) -> str | None:
    """A paragraph of ``text`` as markdown-it renders it, when ``plain_html`` can."""
    html = plain_html(text)
    return f"<p>{html}</p>\n" if html else None


def shown_end(line: str, start: int) -> int:
    """How far a paragraph's line can be shown now: not its trailing white space, not
    an entity or a ``**`` still being written, not from a construct still open."""
    end = len(line.rstrip())
    tail = _UNFINISHED_TAIL.search(line, start, end)
    if tail:
        end = tail.start()
    open_at = first_open(line, start, end)
    if open_at is not None:
        end = open_at
    if end <= start and len(line) - start > MAX_HELD_CHARS:
        end = len(line.rstrip())  # held long enough: shown as it is, fixed at the line's end
    return len(line[:end].rstrip()) if end > start else start


def first_open(text: str, start: int, end: int) -> int | None:
    """Where the first inline construct still open in ``text[start:end]`` begins:
    a code span without its closing backticks, emphasis without its closer, a link
    without its ``]`` or ``)``. None when everything is closed."""
    found = _CONSTRUCT_START.search(text, start, end)
    if found is None:
        return None  # (most text: no character to look at one by one)
    i = found.start()
    while i < end:
        char = text[i]
        if char == "\\":
            i += 2
        elif char == "`":
            run = len(text) - len(text[i:].lstrip("`"))
            length = run - i
            closer = re.compile(rf"(?<!`)`{{{length}}}(?!`)").search(text, run, end)
            if closer is None:
                return i
            i = closer.end()
        elif char in "*_":
            run = i
            while run < end and text[run] == char:
                run += 1
            after = text[run : run + 1]
            before = text[i - 1 : i] if i else " "
            opens = after and not after.isspace() and (char == "*" or not before.isalnum())
            if opens and not _closer(text, char, run, end):
                return i
            i = run
        elif char == "[":
            close = text.find("]", i, end)
            if close < 0 or close == end - 1:
                return i
            if text[close + 1] == "(" and text.find(")", close, end) < 0:
                return i
            i += 1
        else:
            i += 1
    return None


def _closer(text: str, char: str, start: int, end: int) -> bool:
    """Whether a run of ``char`` that can close emphasis follows in ``text[start:end]``."""
    at = text.find(char, start, end)
    while at >= 0:
        if not text[at - 1].isspace():
            return True
        at = text.find(char, at + 1, end)
    return False


def _dedent(line: str, indent: int) -> str:
    """A code line without the spaces its fence was indented by."""
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, indent) :]


def spine(block: str) -> list[tuple[str, int]]:
    """The elements that end a block, outermost first: each one's tag, and where
    its closing tag starts. ``<ul><li>a</li></ul>`` gives ul, then li."""
    found: list[tuple[str, int]] = []
    end = len(block)
    while match := _TRAILING_CLOSER.search(block, 0, end):
        found.append((match.group(1), match.start()))
        end = match.start()
    return found


def balanced(fragment: str) -> bool:
    """Whether every tag ``fragment`` opens, it closes (and it closes no other)."""
    depth = 0
    for closing, tag, self_closing in _TAG.findall(fragment):
        if self_closing or tag in _VOID:
            continue
        depth += -1 if closing else 1
        if depth < 0:
            return False
    return depth == 0


def with_attribute(block: str, attribute: str) -> str:
    """``block`` with ``attribute`` added to its first tag."""
    at = _TAG.match(block)
    assert at is not None, "a block starts with its tag"
    name_end = at.start(2) + len(at.group(2))
    return f"{block[:name_end]} {attribute}{block[name_end:]}"
