"""What a browser builds from ``answer_chunk`` events, without a browser.

A small model of htmx's swaps on the answer (``templates/stream.html``): the
out-of-band elements first (``outerHTML`` or ``beforeend`` into the answer, its
last block, or deeper along the last children), then the chunk's own content,
appended to the listener's target: a table's body, else the last block, else
the answer. The tests compare the tree it builds with the final rendering's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = frozenset({"br", "hr", "img", "input", "wbr"})


@dataclass
class Element:
    tag: str
    attrs: list[tuple[str, str | None]] = field(default_factory=list)
    children: list[Element | str] = field(default_factory=list)

    def elements(self) -> list[Element]:
        return [child for child in self.children if isinstance(child, Element)]

    def html(self) -> str:
        return "".join(serialize(child) for child in self.children)


def serialize(node: Element | str) -> str:
    if isinstance(node, str):
        return node
    attrs = "".join(f' {name}="{value}"' for name, value in node.attrs)
    if node.tag in VOID:
        return f"<{node.tag}{attrs} />"
    return f"<{node.tag}{attrs}>{node.html()}</{node.tag}>"


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.root = Element("root")
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, attrs)
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, attrs))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)

    def handle_entityref(self, name):
        self.stack[-1].children.append(f"&{name};")

    def handle_charref(self, name):
        self.stack[-1].children.append(f"&#{name};")


def parse(fragment: str) -> list[Element | str]:
    builder = _Builder()
    builder.feed(fragment)
    builder.close()
    assert builder.stack == [builder.root], "every tag is closed"
    return builder.root.children


_SELECTOR = re.compile(r"#(?P<id>[\w-]+)(?P<steps>(?: > :last-child)*)$")


class AnswerModel:
    """The answer's element, as htmx would change it."""

    def __init__(self, answer_id: str | None = None) -> None:
        self.answer_id = answer_id  # None: the first out-of-band selector tells
        self.answer = Element("div")
        self.swaps = 0

    def apply(self, chunk: str) -> None:
        if not chunk:
            return
        self.swaps += 1
        target = self.in_band_target()  # found before the out-of-band swaps, as htmx does
        in_band: list[Element | str] = []
        for node in parse(chunk):
            oob = dict(node.attrs).get("hx-swap-oob") if isinstance(node, Element) else None
            if oob is None:
                in_band.append(node)
                continue
            assert isinstance(node, Element)
            node.attrs = [(n, v) for n, v in node.attrs if n != "hx-swap-oob"]
            style, selector = oob.split(":", 1)
            match = _SELECTOR.match(selector)
            assert match, selector
            self.answer_id = self.answer_id or match["id"]
            assert match["id"] == self.answer_id, selector
            parent, element = None, self.answer
            for _ in range(match["steps"].count(":last-child")):
                parent, element = element, element.elements()[-1]
            if style == "outerHTML":
                assert parent is not None
                at = next(i for i, child in enumerate(parent.children) if child is element)
                parent.children[at] = node
            else:
                assert style == "beforeend", style
                element.children += node.children
        if in_band:
            target.children += in_band

    def in_band_target(self) -> Element:
        blocks = self.answer.elements()
        if not blocks:
            return self.answer
        last = blocks[-1]
        if last.tag == "table" and last.elements()[-1:] and last.elements()[-1].tag == "tbody":
            return last.elements()[-1]
        return last

    def html(self) -> str:
        return self.answer.html()


def normalized(html: str) -> str:
    """``html`` written the way ``AnswerModel.html()`` writes it."""
    return "".join(serialize(node) for node in parse(html))
