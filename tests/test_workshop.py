"""docs/workshop.md stays true, as the code changes.

- Every command in its ```bash blocks, and every `python …`, `curl …` or `git …`
  quoted inline, runs a file of this repository with flags (and values) that
  file accepts, asks the app for a route it has, and names files that exist.
- Every file path quoted in backticks exists. Every code name quoted in
  backticks (``format_event``, ``Store.new_uid``, ``responseHandling``…) is in a
  file named in the same paragraph, list or table: the guide says where to
  look, and it is there. Every flag exists.
- Every excerpt (a fenced block right after ``<!-- excerpt: path -->``) is in
  that file, word for word.
- Every patch in docs/workshop/ still applies. The token counter's is applied
  to a copy of the repository whose server.py is started and asked for an
  answer; the two patches of format_event do on the wire what the guide says;
  the echo provider answers when run as the guide runs it; and the cut relay
  drops a stream that then resumes with Last-Event-ID.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from aiohttp import web

import server
from providers.demo import ERROR_COMMAND, DemoProvider
from providers.events import Answer, ChatRequest, Message
from tests.conftest import Pause, ScriptedProvider
from tests.server_process import stop_server
from tests.snippet import uid_from_snippet
from tests.sse_client import SSEEvent, answer_of, parse_stream

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "workshop.md").read_text()
WORKSHOP = ROOT / "docs" / "workshop"
PATCHES = sorted(WORKSHOP.glob("*.patch"))
START_TIMEOUT_S = 15.0  # for a server process to listen
READ_TIMEOUT_S = 10.0  # for a whole answer


def load_script(name: str) -> ModuleType:
    """A script of docs/workshop/ as a module (it is not in a package)."""
    spec = importlib.util.spec_from_file_location(f"workshop_{name}", WORKSHOP / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cut = load_script("cut")


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
    )
    return [name for name in listed.stdout.split("\0") if name]


TRACKED = tracked_files()


# --- reading the guide --------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
EXCERPT = re.compile(r"<!-- excerpt: (\S+) -->")


def fenced_blocks() -> list[tuple[str, str, str]]:
    """Each fenced block: its language, its text, and the line before it."""
    blocks = []
    for match in FENCE.finditer(GUIDE):
        before = GUIDE[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        blocks.append((match.group(1), match.group(2), before))
    return blocks


def units() -> list[str]:
    """The prose, without code blocks and excerpt marks, in paragraphs, lists and
    tables (whatever blank lines separate)."""
    prose = EXCERPT.sub("", FENCE.sub("", GUIDE))
    return [unit for unit in re.split(r"\n\s*\n", prose) if unit.strip()]


def spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


# --- what a span is -------------------------------------------------------------------------

PROGRAMS = {"python", "curl", "git", "npm", "pip", "grep", "head", "cut"}
EXTENSIONS = (".py", ".html", ".js", ".css", ".md", ".json", ".patch", ".txt", ".png", ".toml")
NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:\(\))?")
ATTRIBUTE = re.compile(r'[a-z]+(?:-[a-z]+)+(?:="[^"]*")?')
#: Names quoted in the guide that are not this app's code: shell variables.
NOT_OURS = {"U", "UID"}
#: htmx 1's attribute, which the guide names as gone.
FORMER_ATTRIBUTES = {"hx-sse"}


def kind(span: str) -> str | None:
    span = span.strip()
    first = span.split(" ", 1)[0]
    if first in PROGRAMS and " " in span:
        return "command"
    if span.startswith("--"):
        return "flag"
    if ATTRIBUTE.fullmatch(span):
        return "attribute"
    if span.startswith("# --- "):
        return "banner"
    if re.match(r"[A-Za-z_][\w.]*\(", span):
        return "call"
    if " " in span or span.startswith("<") or "@" in span or span == ERROR_COMMAND:
        return None  # words, markup, a package at a version, the demo's command
    if re.fullmatch(r"(?:application|text)/[\w.+-]+", span):
        return None  # a media type
    if span.startswith("/"):
        return "route"
    if "/" in span or span.endswith(EXTENSIONS):
        return "path"
    if NAME.fullmatch(span) and re.search(r"[_.(A-Z]", span):
        return "name"
    return None


# --- checking what the guide names --------------------------------------------------------

NODE_MODULES = ROOT / "node_modules"
PACKAGES = ("htmx.org", "htmx-ext-sse")  # package.json's dependencies


def path_problem(span: str) -> str | None:
    path = span.rstrip("/")
    if path == "node_modules" or path.startswith("node_modules/"):
        if path != "node_modules" and path.split("/")[1] not in PACKAGES:
            return f"`{span}`: not one of package.json's packages"
        if not NODE_MODULES.is_dir():
            return None  # checked where `npm ci` has run
    elif "/" not in path:  # a file's name: a file of the repo, or one the page loads
        names = {Path(name).name for name in TRACKED}
        names |= {script.filename for script in server.VENDOR_SCRIPTS}
        return None if path in names else f"`{span}`: no such file in the repo"
    return None if (ROOT / path).exists() else f"`{span}`: no such file"


#: The event names of the stream: server.py's, and the one step 6 adds.
EVENTS = set(
    re.findall(
        r'Event\("(\w+)"',
        (ROOT / "server.py").read_text() + (WORKSHOP / "token-counter.patch").read_text(),
    )
)
#: Where the page's attributes are: templates, scripts, the pinned packages, patches.
PAGE_SOURCES = "".join(
    path.read_text()
    for path in [
        *sorted((ROOT / "templates").glob("*.html")),
        *sorted((ROOT / "static").glob("*.js")),
        ROOT / "package.json",
        *PATCHES,
    ]
)


def attribute_problem(span: str) -> str | None:
    """An htmx attribute, or a package name, as the page's sources have it (up to
    a placeholder such as ``<name>`` or ``…`` in its value)."""
    if span.split("=", 1)[0] in FORMER_ATTRIBUTES:
        return None
    known = re.split(r"[<…]", span, maxsplit=1)[0]
    return None if known in PAGE_SOURCES else f"`{span}`: not in the page's sources"


def unit_files(unit: str) -> list[Path]:
    """The files a paragraph, list or table names: quoted paths, and the scripts of
    quoted commands."""
    files = []
    for span in spans(unit):
        found = kind(span)
        if found == "path":
            files.append(ROOT / span)
        elif found == "command":
            files += [ROOT / word for word in span.split() if word.endswith(EXTENSIONS)]
    return [file for file in files if file.is_file()]


def defines(text: str, name: str) -> bool:
    """Whether Python source ``text`` defines ``name`` (a function, class, constant,
    field or attribute), or has it as a string (an event's name)."""
    n = re.escape(name)
    definition = (
        rf"^\s*(?:async\s+def|def|class)\s+{n}\b"
        rf"|^\s*(?:self\.)?{n}\s*(?::[^=\n]+)?=(?!=)"
        rf"|^\s*{n}\s*:"
    )
    return bool(re.search(definition, text, re.M) or re.search(rf"[\"']{n}[\"']", text))


def found_in(name: str, file: Path) -> bool:
    name = name.removesuffix("()")
    text = file.read_text()
    if file.suffix != ".py":
        return bool(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text))
    parts = name.split(".")
    if len(parts) == 1:
        return defines(text, name)
    first, last = parts[0], parts[-1]
    if first[0].isupper():  # Class.member
        return bool(re.search(rf"^class\s+{first}\b", text, re.M)) and defines(text, last)
    return name in text or defines(text, last)  # module.function, self.attribute


SERVER_PARSER = server.build_parser()
CUT_PARSER = cut.build_parser()


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def flag_problem(span: str, files: list[Path]) -> str | None:
    flag = span.split(" ", 1)[0].split("=", 1)[0]
    if flag in options(SERVER_PARSER):
        return None
    if ROOT / "docs/workshop/cut.py" in files and flag in options(CUT_PARSER):
        return None
    return f"`{span}`: server.py has no flag {flag}"


def app_routes() -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) for each route of the app."""
    app = server.make_app(server.Config())
    routes = []
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        parts = re.split(r"\{[^}]+\}", resource.canonical)
        pattern = "[^/]+".join(re.escape(part) for part in parts)
        if isinstance(resource, web.StaticResource):
            pattern += "(?:/.*)?"
        routes.append((route.method, re.compile(pattern)))
    return routes


ROUTES = app_routes()


def route_problem(target: str, method: str | None = None) -> str | None:
    path = re.sub(r"<[^>]*>", "x", target.split("?", 1)[0])
    for route_method, pattern in ROUTES:
        if pattern.fullmatch(path) and method in (None, route_method):
            return None
    return f"{method or 'any'} {path}: the app has no such route"


#: The scripts the guide runs with python, and the command lines they take.
PYTHON_SCRIPTS = {
    "server.py": "server",
    "docs/workshop/echo_provider.py": "server",  # it reads server.py's own flags
    "docs/workshop/cut.py": "cut",
}
#: Environment variables the app reads, as declared next to its settings.
ENVIRONMENT = set(
    re.findall(r'env="(\w+)"', (ROOT / "server.py").read_text())
    + re.findall(r'env="(\w+)"', (ROOT / "providers" / "openai.py").read_text())
)


def simple_commands(line: str) -> Iterator[tuple[list[str], list[str]]]:
    """The simple commands of one shell line (those inside ``$( )`` too), each as its
    variable assignments and its words."""
    inner = re.findall(r"\$\(([^()]*)\)", line)
    for part in [re.sub(r"\$\([^()]*\)", "VALUE", line), *inner]:
        for simple in re.split(r"\s*(?:&&|\|\||\||;)\s*", part):
            words = shlex.split(simple)
            assignments = []
            while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                assignments.append(words.pop(0).split("=", 1)[0])
            if words or assignments:
                yield assignments, words


def command_problems(line: str) -> list[str]:
    problems = []
    for assignments, words in simple_commands(line):
        if not words:
            continue  # a shell variable, such as U=$(…)
        program, args = words[0], words[1:]
        problems += [
            f"{line}: the app reads no {name}"
            for name in assignments
            if program == "python" and name not in ENVIRONMENT
        ]
        if program == "python":
            problems += python_problems(line, args)
        elif program == "curl":
            method = "POST" if "-d" in args else "GET"
            urls = [arg for arg in args if arg.startswith("http")]
            problems += [
                f"{line}: {problem}"
                for url in urls
                if (problem := route_problem("/" + url.split("/", 3)[3], method))
            ]
        elif program == "git":
            if not args or args[0] not in ("apply", "checkout", "status", "diff"):
                problems.append(f"{line}: a git command the guide should not need")
            files = [arg for arg in args[1:] if not arg.startswith("-") and "<" not in arg]
            problems += [f"{line}: no file {file}" for file in files if not (ROOT / file).exists()]
        elif program == "pip":
            if "-r" in args and not (ROOT / args[args.index("-r") + 1]).is_file():
                problems.append(f"{line}: no such requirements file")
        elif program == "npm":
            if args != ["ci"]:
                problems.append(f"{line}: only `npm ci` is needed")
        elif program not in ("grep", "head", "cut"):
            problems.append(f"{line}: {program} is not a command the guide uses")
    return problems


def python_problems(line: str, args: list[str]) -> list[str]:
    script, flags = args[0], args[1:]
    if script not in PYTHON_SCRIPTS:
        return [f"{line}: {script} is not a script this test knows"]
    if "--help" in flags:
        return []
    try:
        if PYTHON_SCRIPTS[script] == "server":
            server.parse_config(flags, {})  # flags, values, and how they go together
        else:
            CUT_PARSER.parse_args(flags)
    except SystemExit:
        return [f"{line}: {script} refuses these flags"]
    return []


# --- the guide's text ---------------------------------------------------------------------


def test_the_guide_has_what_these_tests_read():
    blocks = fenced_blocks()
    assert sum(EXCERPT.fullmatch(before) is not None for _, _, before in blocks) >= 20
    assert sum(language == "bash" for language, _, _ in blocks) >= 10
    assert len(units()) > 100


def test_every_command_runs_a_file_of_the_repo_with_flags_it_takes():
    lines = [
        line
        for language, text, _ in fenced_blocks()
        if language == "bash"
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    lines += [span for unit in units() for span in spans(unit) if kind(span) == "command"]
    problems = [problem for line in lines for problem in command_problems(line)]
    assert not problems, "\n".join(problems)


def test_every_excerpt_is_in_its_file_word_for_word():
    problems = []
    for _, text, before in fenced_blocks():
        mark = EXCERPT.fullmatch(before)
        if mark is None:
            continue
        path = ROOT / mark.group(1)
        if not path.is_file():
            problems.append(f"{mark.group(1)}: no such file")
        elif text not in path.read_text():
            problems.append(f"{mark.group(1)}: not found word for word:\n{text}")
    assert not problems, "\n\n".join(problems)


def test_every_path_name_flag_and_route_in_backticks_is_real():
    problems = []
    for unit in units():
        files = unit_files(unit)
        for span in spans(unit):
            span = span.strip()
            if kind(span) == "call":
                span = span.split("(", 1)[0]  # a call: the function's name
            match kind(span):
                case "path":
                    problems.append(path_problem(span))
                case "flag":
                    problems.append(flag_problem(span, files))
                case "route":
                    problems.append(route_problem(span))
                case "banner" if span not in (ROOT / "server.py").read_text():
                    problems.append(f"`{span}`: no such section in server.py")
                case "attribute":
                    problems.append(attribute_problem(span))
                case "name" if span in EVENTS or span in NOT_OURS:
                    pass
                case "name":
                    if not files:
                        problems.append(f"`{span}`: its paragraph names no file to find it in")
                    elif not any(found_in(span, file) for file in files):
                        shown = ", ".join(str(file.relative_to(ROOT)) for file in files)
                        problems.append(f"`{span}`: not in {shown}")
    problems = [problem for problem in problems if problem]
    assert not problems, "\n".join(problems)


def test_every_patch_and_script_of_the_workshop_is_in_the_guide():
    for name in TRACKED:
        if name.startswith("docs/workshop/"):
            assert name in GUIDE, name


# --- the patches ----------------------------------------------------------------------------


def git_apply(patch: Path, folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    # No repository above `folder` is looked for: the patch applies to it alone.
    environ = {**os.environ, "GIT_CEILING_DIRECTORIES": str(folder.parent)}
    environ.pop("GIT_DIR", None)
    return subprocess.run(
        ["git", "apply", *options, str(patch)],
        cwd=folder,
        env=environ,
        capture_output=True,
        text=True,
        timeout=10,
    )


def copy_of(files: list[str], folder: Path) -> Path:
    for name in files:
        if not (ROOT / name).is_file():
            continue  # deleted, not yet committed
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    return folder


@pytest.mark.parametrize("patch", PATCHES, ids=lambda patch: patch.name)
def test_each_patch_applies_to_the_code_as_it_is(patch, tmp_path):
    touched = re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), re.M)
    copy = copy_of(touched, tmp_path)
    applied = git_apply(patch, copy)
    assert applied.returncode == 0, applied.stderr


def patched_server(patch: Path, folder: Path) -> ModuleType:
    """server.py with ``patch`` applied, as a module of its own."""
    copy = copy_of(["server.py"], folder)
    applied = git_apply(patch, copy)
    assert applied.returncode == 0, applied.stderr
    name = "server_" + patch.stem.replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, copy / "server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def read_wire(module: ModuleType, *events: tuple[str, str]) -> list[tuple[str, str, str | None]]:
    """What a browser dispatches from these events, as ``module.format_event`` writes them."""
    wire = module.RETRY_FIELD + b"".join(
        module.format_event(name, data, event_id) for event_id, (name, data) in enumerate(events, 1)
    )
    dispatched, _ = parse_stream(wire.decode())
    return [(event.event, event.data, event.id) for event in dispatched]


def test_without_data_close_is_never_dispatched(tmp_path):
    """Step 4, change A: an event without a data line is not dispatched."""
    events = [("thought", "Let me think."), ("thought", ""), ("close", "")]
    assert read_wire(server, *events) == [
        ("thought", "Let me think.", "1"),
        ("thought", "", "2"),
        ("close", "", "3"),
    ]
    changed = patched_server(WORKSHOP / "close-without-data.patch", tmp_path)
    assert read_wire(changed, *events) == [("thought", "Let me think.", "1")]


def test_without_the_blank_line_thoughts_merge_into_the_next_event(tmp_path):
    """Step 4, change B: the thoughts arrive inside the next answer_chunk, and the
    last (empty) thought inside final_answer."""
    changed = patched_server(WORKSHOP / "missing-blank-line.patch", tmp_path)
    wire = read_wire(
        changed,
        ("thought", "Thinking…"),
        ("thought", "The prompt"),
        ("answer_chunk", "<p>Hi"),
        ("thought", ""),
        ("final_answer", "<div>Hi</div>"),
        ("close", ""),
    )
    assert wire == [
        ("answer_chunk", "Thinking…\nThe prompt\n<p>Hi", "3"),
        ("final_answer", "\n<div>Hi</div>", "5"),
        ("close", "", "6"),
    ]


# --- the token counter and the echo provider, running ---------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running(args: list[str], folder: Path, log: Path) -> Iterator[str]:
    """A Python script of ``folder`` as a server on a free loopback port: its URL."""
    port = free_port()
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, *args, "--port", str(port)],
            cwd=folder,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start:\n" + log.read_text()
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process, log)


async def ask(url: str, prompt: str) -> tuple[str, list[SSEEvent]]:
    """POST a prompt as the page does and read its whole stream: the snippet, the events."""
    async with asyncio.timeout(READ_TIMEOUT_S), aiohttp.ClientSession(url) as session:
        async with session.post("/process_prompt", data={"prompt": prompt}) as posted:
            assert posted.status == 200, await posted.text()
            snippet = await posted.text()
        uid = uid_from_snippet(snippet)
        async with session.get("/response-stream", params={"uid": uid}) as stream:
            events, _ = parse_stream(await stream.text())
    return snippet, events


async def demo_answer_pieces(prompt: str) -> int:
    """How many Answer events the demo provider yields for a first prompt."""
    request = ChatRequest((Message("system", "A system prompt."), Message("user", prompt)))
    events = [event async for event in DemoProvider(delay=0).stream(request)]
    return sum(isinstance(event, Answer) for event in events)


async def test_the_token_counter_patch_counts_in_a_copy_of_the_app(tmp_path):
    """Step 6's solution, applied to a copy of every tracked file and run for real."""
    copy = copy_of(TRACKED, tmp_path / "app")
    applied = git_apply(WORKSHOP / "token-counter.patch", copy)
    assert applied.returncode == 0, applied.stderr
    args = ["server.py", "--demo-delay", "0", "--answer-window", "0"]
    with running(args, copy, tmp_path / "server.log") as url:
        snippet, events = await ask(url, "hi")

    assert 'sse-swap="token_count"' in snippet
    names = [event.event for event in events]
    counts = [int(event.data) for event in events if event.event == "token_count"]
    assert counts, names
    assert counts == sorted(set(counts))  # growing; a newer count may replace older ones
    assert counts[-1] == await demo_answer_pieces("hi")
    # Each count comes right after an answer chunk.
    assert all(
        names[i - 1] == "answer_chunk" for i, name in enumerate(names) if name == "token_count"
    )
    assert names[-2:] == ["final_answer", "close"]


async def test_the_echo_provider_answers_run_as_the_guide_runs_it(tmp_path):
    """Step 8's solution: `python docs/workshop/echo_provider.py --port …`."""
    prompt = "Hello  <b>echo</b>, word by word"
    log = tmp_path / "echo.log"
    with running(["docs/workshop/echo_provider.py", "--plain-stream"], ROOT, log) as url:
        _, events = await ask(url, prompt)
        async with aiohttp.ClientSession(url) as session, session.get("/") as page:
            assert "echo (no model)" in await page.text()  # the page names its model

    thoughts = [event.data for event in events if event.event == "thought"]
    assert "Hello  &lt;b&gt;echo&lt;/b&gt;, word by word" in thoughts  # escaped, whole
    assert answer_of(events) == prompt
    assert [event.event for event in events][-2:] == ["final_answer", "close"]
    assert "provider=echo outcome=done" in log.read_text()


# --- the cut relay -------------------------------------------------------------------------


@asynccontextmanager
async def relay_to(port: int) -> AsyncIterator[tuple[object, str]]:
    relay = cut.Relay(port, down=0.0)
    listening = await asyncio.start_server(relay.serve, "127.0.0.1", 0)
    try:
        yield relay, f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
    finally:
        relay.cut()
        listening.close()
        await listening.wait_closed()


async def test_the_cut_relay_drops_a_stream_that_resumes_after_its_last_event(start_app):
    """Step 7: a cut through docs/workshop/cut.py, then the browser's reconnect."""
    script = [Answer("Before the cut. "), Pause(0.5), Answer("After the cut.")]
    client = await start_app(ScriptedProvider(script), grace_period=5.0)
    # A connection of its own for each request: the cut drops them all.
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        asyncio.timeout(READ_TIMEOUT_S),
        relay_to(client.server.port) as (relay, url),
        aiohttp.ClientSession(url, connector=connector) as session,
    ):
        async with session.post("/process_prompt", data={"prompt": "Cut me"}) as posted:
            uid = uid_from_snippet(await posted.text())
        received = ""
        async with session.get("/response-stream", params={"uid": uid}) as stream:
            with pytest.raises(aiohttp.ClientError):  # the cut, mid-stream
                async for line in stream.content:
                    received += line.decode()
                    if "event: answer_chunk" in received and received.endswith("\n\n"):
                        relay.cut()
        before, _ = parse_stream(received)
        last_id = before[-1].id
        assert last_id is not None
        headers = {"Last-Event-ID": last_id}
        async with session.get("/response-stream", params={"uid": uid}, headers=headers) as again:
            after, _ = parse_stream(await again.text())

    ids = [int(event.id or 0) for event in before + after]
    assert ids == list(range(1, len(ids) + 1))  # nothing lost, nothing twice
    assert answer_of(before + after) == "Before the cut. After the cut."
    assert after[-1].event == "close"
