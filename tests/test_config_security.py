"""The configuration's safety rules: dev mode is never a silent default off
loopback, and the HTTP edge settings are validated like every other value."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, is_loopback_host, load_config

SECRET = "s" * 40


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_dev_mode_is_the_default_on_loopback(host: str) -> None:
    config = load_config({"HUDDLE_HOST": host})
    assert config.dev_mode is True
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "huddle.example"])
def test_no_implicit_dev_mode_off_loopback(host: str) -> None:
    """What the container image used to do: no secret on 0.0.0.0 meant dev mode,
    so anyone could mint tokens. Now it refuses to start and says why."""
    with pytest.raises(ConfigError) as caught:
        load_config({"HUDDLE_HOST": host})
    message = str(caught.value)
    assert "HUDDLE_JWT_SECRET is required" in message and "HUDDLE_DEV=1" in message
    assert not is_loopback_host(host)


def test_explicit_dev_mode_off_loopback_is_allowed() -> None:
    config = load_config({"HUDDLE_HOST": "0.0.0.0", "HUDDLE_DEV": "1"})
    assert config.dev_mode is True


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_a_secret_means_no_dev_mode_anywhere(host: str) -> None:
    config = load_config({"HUDDLE_HOST": host, "HUDDLE_JWT_SECRET": SECRET})
    assert config.dev_mode is False


def test_the_container_environment_is_not_dev_mode() -> None:
    """The Dockerfile's ENV (HUDDLE_HOST=0.0.0.0, HUDDLE_DEV=0) without a secret
    refuses to start; with one it runs in production mode."""
    image_env = _dockerfile_env()
    assert image_env["HUDDLE_HOST"] == "0.0.0.0"
    assert image_env.get("HUDDLE_DEV") == "0"
    with pytest.raises(ConfigError, match="HUDDLE_JWT_SECRET is required"):
        load_config(image_env)
    assert load_config({**image_env, "HUDDLE_JWT_SECRET": SECRET}).dev_mode is False
    assert load_config({**image_env, "HUDDLE_DEV": "1"}).dev_mode is True


def _dockerfile_env() -> dict[str, str]:
    text = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    runtime = text.rsplit("\nFROM ", 1)[1]
    block = runtime.split("\nENV ", 1)[1].split("\n\n", 1)[0]
    env: dict[str, str] = {}
    for line in block.replace("\\\n", "\n").splitlines():
        for item in line.split():
            name, sep, value = item.partition("=")
            if sep and name.startswith("HUDDLE_"):
                env[name] = value
    return env


def test_http_edge_defaults() -> None:
    http = load_config({}).http
    assert http.frame_ancestors == ("'self'",)
    assert http.max_pending_per_ip == 32
    assert http.header_timeout_s == 10


def test_frame_ancestors_parse() -> None:
    config = load_config({"HUDDLE_FRAME_ANCESTORS": "self, https://app.example:8443 *.example.org"})
    assert config.http.frame_ancestors == (
        "'self'",
        "https://app.example:8443",
        "*.example.org",
    )
    assert load_config({"HUDDLE_FRAME_ANCESTORS": "'none'"}).http.frame_ancestors == ("'none'",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HUDDLE_FRAME_ANCESTORS": "https://a.example; script-src *"}, "is not a CSP source"),
        ({"HUDDLE_FRAME_ANCESTORS": "'none' 'self'"}, "'none' cannot be combined"),
        ({"HUDDLE_MAX_PENDING_PER_IP": "0"}, "HUDDLE_MAX_PENDING_PER_IP=0 is out of range"),
        ({"HUDDLE_HEADER_TIMEOUT": "0"}, "HUDDLE_HEADER_TIMEOUT=0 is out of range"),
    ],
)
def test_bad_edge_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert message in str(caught.value)
