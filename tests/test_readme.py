"""The README's two commands stay true (CI runs the test command word for word), the
documentation names every flag, and its links lead to files in the repo."""

import re
from pathlib import Path

import pytest

from server import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def command_under(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1)


def test_ci_runs_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == command_under("Test it")


def test_run_command_starts_the_server():
    assert command_under("Run it") == "pip install -r requirements.txt && python server.py"


def test_readme_documents_every_flag():
    """docs/configuration.md, which the README links to, names each flag."""
    flags = [
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    for flag in flags:
        assert f"`{flag}`" in CONFIGURATION, flag


def without_code_blocks(markdown: str) -> str:
    return re.sub(r"^ *```.*?^ *```", "", markdown, flags=re.S | re.M)


def relative_links(markdown: str) -> list[str]:
    """The targets of a page's links, without absolute URLs and examples in code."""
    text = re.sub(r"`[^`\n]*`", "", without_code_blocks(markdown))
    targets = re.findall(r"\]\(\s*<?([^)\s>]+)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.M)
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I)]


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes from a page's headings."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", without_code_blocks(markdown), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize(
    "page",
    [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
    ids=lambda page: str(page.relative_to(ROOT)),
)
def test_relative_links_point_at_files_in_the_repo(page):
    markdown = page.read_text()
    for link in relative_links(markdown):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_relative_to(ROOT), f"{link} leaves the repo"
        assert target.exists(), f"{link}: no such file"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target.read_text()), f"{link}: no such heading"
