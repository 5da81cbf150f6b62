"""The README's two commands stay true (CI runs the test command word for word), and the
documentation names every flag."""

import re
from pathlib import Path

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
