"""Settings declared once: a dataclass field carries its flag, environment variable,
converter, help and group, and the command line is built from those fields.

    port: int = setting(8080, "port to listen on", env="PORT", convert=port_number)

declares ``--port``, reads ``PORT`` when the flag is not given, checks the value
with ``port_number`` and lists it in ``--help`` with its default. A flag beats its
environment variable, which beats the default. ``server.Config`` and
``providers.openai.OpenAISettings`` are declared this way; ``read_settings`` fills
one of them from the parsed flags and the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from yarl import URL

#: The --help groups, in the order they are listed.
SERVER = "the server"
MODEL_SERVER = "the model server (any OpenAI-compatible API)"
LIMITS = "limits (each refusal is a readable message)"
ACCESS = "access"
TUNING = "tuning"
SCALE = "several processes (a shared store in Redis)"
GROUPS = (SERVER, MODEL_SERVER, LIMITS, ACCESS, TUNING, SCALE)


@dataclass(frozen=True)
class Setting:
    """How one field is set from outside; kept in the field's metadata."""

    help: str
    group: str
    env: str | None = None
    convert: Callable[[str], Any] = str
    #: False: from the environment only, so a secret never shows in `ps`.
    flag: bool = True
    choices: tuple[str, ...] | None = None
    #: The value's name in --help; default: N for a count, SECONDS for a time.
    metavar: str | None = None
    #: Never shown: not in repr(), nor in the message that refuses a bad value.
    secret: bool = False


def setting(
    default: Any,
    help: str,
    *,
    group: str,
    env: str | None = None,
    convert: Callable[[str], Any] = str,
    flag: bool = True,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    secret: bool = False,
) -> Any:
    """A dataclass field that can be set by a flag (``--field-name``) or ``env``.

    A field whose default is ``False`` is a switch: its flag takes no value. A
    field without a flag, or ``secret`` (a URL with a password, say), is kept out
    of ``repr()``.
    """
    declared = Setting(help, group, env, convert, flag, choices, metavar, secret)
    return dataclasses.field(
        default=default, repr=flag and not secret, metadata={"setting": declared}
    )


def declared(cls: type) -> list[tuple[dataclasses.Field[Any], Setting]]:
    """The fields of ``cls`` that are settings, with their declarations."""
    return [
        (field, field.metadata["setting"])
        for field in dataclasses.fields(cls)
        if "setting" in field.metadata
    ]


def flag_of(field: dataclasses.Field[Any]) -> str:
    return "--" + field.name.replace("_", "-")


# --- converters: text in, a value out, or ValueError saying what is wrong ---


def number(kind: type[int] | type[float], text: str) -> Any:
    """``text`` as an int or a float, or a ValueError a person can read."""
    try:
        return kind(text)
    except ValueError:
        raise ValueError("must be a whole number" if kind is int else "must be a number") from None


def positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """A converter that accepts only numbers above zero."""

    def convert(text: str) -> Any:
        value = number(kind, text)
        if not value > 0 or not math.isfinite(value):  # `not >` also refuses nan
            raise ValueError(f"must be a number above zero, not {text}")
        return value

    return convert


def not_negative(text: str) -> float:
    value = number(float, text)
    if not value >= 0 or not math.isfinite(value):  # `not >=` also refuses nan
        raise ValueError(f"must be a finite number, not negative, not {text}")
    return value


MAX_PORT = 65535


def port_number(text: str) -> int:
    port = number(int, text)
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"must be between 1 and {MAX_PORT}")
    return port


def http_url(text: str) -> str:
    try:
        url = URL(text)
    except ValueError:
        raise ValueError("not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http(s) URL, as in http://127.0.0.1:8080/v1")
    return text


def redis_address(text: str) -> str | None:
    """A Redis URL (redis://, rediss:// or unix://); empty means none."""
    if not text:
        return None
    try:
        url = URL(text)
    except ValueError:
        raise ValueError("not a URL") from None
    if url.scheme not in ("redis", "rediss", "unix") or not (url.host or url.path):
        raise ValueError("must be a Redis URL, as in redis://127.0.0.1:6379/0")
    return text


def host_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of host names, as in "chat.example.org,example.org"."""
    names = tuple(name.strip().rstrip(".").lower() for name in text.split(",") if name.strip())
    for name in names:
        if name != "*" and not _HOST_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a host name")
    return names


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


def text_or_none(text: str) -> str | None:
    """Text, where empty means "none"."""
    return text or None


# --- the command line ---


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: the usage block hides them."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(*classes: type, prog: str, description: str, epilog: str) -> Parser:
    """A parser with one flag per setting of ``classes``, grouped as declared."""
    parser = Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for cls in classes:
        for field, declaration in declared(cls):
            if not declaration.flag:
                continue
            group = groups[declaration.group]
            if field.default is False:
                group.add_argument(flag_of(field), action="store_true", help=declaration.help)
                continue
            notes = [f"env {declaration.env}"] if declaration.env else []
            if "default:" not in declaration.help:  # else the help explains its default
                notes.append(f"default {shown(field.default)}")
            group.add_argument(
                flag_of(field),
                help=f"{declaration.help} ({'; '.join(notes)})" if notes else declaration.help,
                choices=declaration.choices,
                metavar=metavar(field, declaration),
            )
    return parser


def shown(value: Any) -> str:
    """A default as --help shows it."""
    if isinstance(value, float):
        return f"{value:g}"
    if value in ((), None, ""):
        return "none"
    return str(value)


def metavar(field: dataclasses.Field[Any], declaration: Setting) -> str | None:
    """The value's name in --help; None: argparse's own (the flag's name in capitals)."""
    if declaration.metavar or declaration.choices:
        return declaration.metavar
    if isinstance(field.default, int):
        return "N"
    if isinstance(field.default, float) and "seconds" in declaration.help:
        return "SECONDS"
    return None


def read_settings(
    cls: type, args: Mapping[str, Any], environ: Mapping[str, str], parser: Parser
) -> dict[str, Any]:
    """The values of ``cls``'s settings that were given, by flag or else by environment.

    A value that does not convert ends the program with a one-line message that
    names where it came from.
    """
    values: dict[str, Any] = {}
    for field, declaration in declared(cls):
        source, given = flag_of(field), args.get(field.name) if declaration.flag else None
        if (given is None or given is False) and declaration.env:
            source, given = declaration.env, environ.get(declaration.env)
        if given is None or given is False:
            continue  # the default
        if given is True:  # a switch
            values[field.name] = True
            continue
        try:
            values[field.name] = declaration.convert(given)
        except ValueError as problem:
            shown = "the value given" if declaration.secret else repr(given)
            parser.error(f"{source}: {shown} is not valid ({problem})")
    return values
