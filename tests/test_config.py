"""`python server.py` options: a flag beats its environment variable, which beats the default."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from providers.openai import DEFAULT_BASE_URL, OpenAISettings
from server import Config, answers_from, build_parser, parse_config


def test_defaults_run_the_demo_on_loopback():
    config = parse_config([], {})
    assert (config.host, config.port, config.provider) == ("127.0.0.1", 8080, "demo")
    assert config.openai.api_key is None


def test_environment_beats_defaults():
    config = parse_config([], {"HOST": "0.0.0.0", "PORT": "9000", "OPENAI_MODEL": "qwen3"})
    assert (config.host, config.port, config.openai.model) == ("0.0.0.0", 9000, "qwen3")


def test_flags_beat_environment():
    env = {"HOST": "0.0.0.0", "PORT": "9000", "OPENAI_MODEL": "qwen3",
           "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}  # fmt: skip
    config = parse_config(
        ["--host", "127.0.0.2", "--port", "9001", "--model", "llama", "--base-url",
         "http://127.0.0.1:2/v1", "--provider", "demo"],
        env,
    )  # fmt: skip
    assert (config.host, config.port, config.openai.model) == ("127.0.0.2", 9001, "llama")
    assert (config.openai.base_url, config.provider) == ("http://127.0.0.1:2/v1", "demo")


@pytest.mark.parametrize(
    ("env", "provider"),
    [
        ({}, "demo"),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1"}, "openai"),
        ({"OPENAI_API_KEY": "sk-test"}, "openai"),
    ],
    ids=["nothing-set", "base-url-set", "key-set"],
)
def test_provider_defaults_to_openai_when_configured(env, provider):
    assert parse_config([], env).provider == provider


def test_key_set_without_url_means_openai_itself():
    config = parse_config([], {"OPENAI_API_KEY": "sk-test"})
    assert config.openai.base_url == DEFAULT_BASE_URL


def test_api_key_is_environment_only_and_never_printed():
    config = parse_config([], {"OPENAI_API_KEY": "sk-very-secret"})
    assert config.openai.api_key == "sk-very-secret"
    assert "sk-very-secret" not in repr(config)
    assert "--api-key" not in build_parser().format_help()


BAD_VALUES = [
    (["--port", "x"], {}, "--port: 'x' is not valid"),
    ([], {"PORT": "eighty"}, "PORT: 'eighty' is not valid"),
    (["--uid-ttl", "0"], {}, "--uid-ttl: '0' is not valid (must be a number above zero, not 0)"),
    (["--grace-period", "nan"], {}, "--grace-period: 'nan' is not valid"),
    (["--max-duration", "inf"], {}, "--max-duration: 'inf' is not valid"),
    ([], {"OPENAI_TEMPERATURE": "-1"}, "not negative"),
    (["--provider", "claude"], {}, "invalid choice: 'claude'"),
    ([], {"OPENAI_BASE_URL": "localhost:11434/v1"},
     "OPENAI_BASE_URL: 'localhost:11434/v1' is not valid (must be an http(s) URL"),
    (["--base-url", "http://[::1"], {}, "--base-url: 'http://[::1' is not valid (not a URL)"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "env", "message"), BAD_VALUES)
def test_bad_values_are_refused_with_a_message(capsys, argv, env, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv, env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_model_settings_come_from_flags_and_env():
    config = parse_config(
        ["--temperature", "0.2", "--idle-timeout", "5", "--reasoning-hold", "0"],
        {
            "OPENAI_MAX_TOKENS": "512",
            "OPENAI_SYSTEM_PROMPT": "Be brief.",
            "OPENAI_TEMPERATURE": "1",
        },
    )
    assert (config.openai.temperature, config.openai.max_tokens, config.openai.system_prompt) == (
        0.2,
        512,
        "Be brief.",
    )
    assert (config.openai.idle_timeout, config.openai.reasoning_hold) == (5.0, 0.0)


def test_a_system_prompt_flag_fixes_it_for_every_conversation():
    assert parse_config(["--system-prompt", ""], {}).openai.system_prompt == ""  # none at all
    assert parse_config(["--system-prompt", "Be brief."], {}).openai.system_prompt == "Be brief."
    assert parse_config([], {}).openai.system_prompt is None  # each conversation's own


def test_help_documents_every_option():
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "server.py", "--help"], cwd=root, capture_output=True, text=True,
        timeout=30, check=True,
    )  # fmt: skip
    options = ["--host", "--port", "--provider", "--base-url", "--model", "--system-prompt",
               "--temperature", "--max-tokens", "--connect-timeout", "--first-token-timeout",
               "--idle-timeout", "--reasoning-hold", "--demo-delay", "--ping-interval",
               "--uid-ttl", "--max-pending", "--max-prompt-chars", "--max-body-bytes"]  # fmt: skip
    for option in options:
        assert option in result.stdout
    for variable in ["HOST", "PORT", "OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"]:
        assert variable in result.stdout
    assert set(vars(Config())) >= {"host", "port", "provider", "openai"}


@pytest.mark.parametrize(
    ("argv", "environ", "said"),
    [([], {}, "the demo provider"),
     (["--base-url", "http://user:pw@127.0.0.1:11434/v1", "--model", "qwen3"], {},
      "the model server at http://127.0.0.1:11434/v1, model qwen3"),
     (["--base-url", "https://me:pw@models.example/v1?key=k#x"], {"OPENAI_MODEL": "m"},
      "the model server at https://models.example/v1, model m"),
     (["--base-url", "http://127.0.0.1:8091/v1"], {},
      "the model server at http://127.0.0.1:8091/v1, "
      "model the one it lists (asked at the first prompt)")],
    ids=["demo", "with-model", "credentials-and-query", "model-discovered"],
)  # fmt: skip
def test_start_up_log_says_where_answers_come_from_without_secrets(argv, environ, said):
    assert answers_from(parse_config(argv, environ)) == said


def test_an_invalid_value_is_one_line_without_the_usage_block(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--max-streams", "many"], {})
    error = capsys.readouterr().err
    assert (
        error == "server.py: error: --max-streams: 'many' is not valid (must be a whole number)\n"
    )


def test_help_groups_the_settings_and_ends_with_two_examples():
    text = build_parser().format_help().split("\noptions:", 1)[1]  # after the usage lines
    headings = ["the server:", "the model server", "limits", "access:", "tuning:"]
    places = [text.index("\n" + heading) for heading in headings]
    assert places == sorted(places)
    examples = text.split("examples:", 1)[1]
    assert examples.count("python server.py") == 2
    # Each flag sits under its group's heading.
    assert text.index("--base-url") > places[1] and text.index("--max-streams ") > places[2]
    assert text.index("--trust-proxy") > places[3] and text.index("--grace-period") > places[4]


@pytest.mark.parametrize("cls", [Config, OpenAISettings])
def test_every_field_is_a_setting_declared_once(cls):
    """Flag, environment variable, converter and help sit on the field itself."""
    nested = {"openai"}  # OpenAISettings, declared field by field in providers/openai.py
    for field in dataclasses.fields(cls):
        if field.name in nested:
            continue
        declaration = field.metadata["setting"]
        assert declaration.help and (declaration.flag or declaration.env), field.name
    flags = [a.option_strings[0] for a in build_parser()._actions if a.option_strings]
    assert len(flags) == len(set(flags))


def test_secrets_come_only_from_the_environment_and_never_show_in_repr():
    config = parse_config([], {"APP_PASSWORD": "hunter2", "OPENAI_API_KEY": "sk-k"})
    assert (config.password, config.openai.api_key) == ("hunter2", "sk-k")
    assert "hunter2" not in repr(config) and "sk-k" not in repr(config)
    assert parse_config([], {"APP_PASSWORD": ""}).password is None
    help_text = build_parser().format_help()
    assert "--password" not in help_text and "--api-key" not in help_text


def test_switches_take_no_value():
    assert parse_config(["--trust-proxy", "--log-prompts"], {}).trust_proxy is True
    assert parse_config([], {}).trust_proxy is False


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [(["--base-url", "http://user:pw@127.0.0.1:11434/v1"], {"OPENAI_API_KEY": "sk-secret"},
      "carries a user name and password, and OPENAI_API_KEY is set too"),
     (["--max-streams", "10", "--max-streams-per-client", "10"], {},
      "--max-streams-per-client must be below --max-streams"),
     (["--max-pending", "5", "--max-pending-per-client", "8"], {},
      "--max-pending-per-client must be below --max-pending")],
    ids=["url-credentials-and-key", "one-client-takes-every-stream", "one-client-takes-every-wait"],
)  # fmt: skip
def test_settings_that_do_not_go_together_are_refused_at_start(capsys, argv, environ, message):
    with pytest.raises(SystemExit):
        parse_config(argv, environ)
    error = capsys.readouterr().err
    assert message in error
    assert "pw" not in error and "sk-secret" not in error


def test_allowed_hosts_are_host_names(capsys):
    config = parse_config([], {"ALLOWED_HOSTS": "Chat.Example.org., example.org"})
    assert config.allowed_hosts == ("chat.example.org", "example.org")
    with pytest.raises(SystemExit):
        parse_config(["--allowed-hosts", "http://evil/"], {})
    assert "is not a host name" in capsys.readouterr().err
