"""``HUDDLE_WORKERS`` and ``huddle serve --workers``: the number of cores by default,
bounded, and the flag over the variable."""

from __future__ import annotations

import os

import pytest

from server.cli import main
from server.config import ConfigError, load_config


def test_workers_default_to_the_cores_this_process_may_use() -> None:
    assert load_config({}).workers == len(os.sched_getaffinity(0))
    assert load_config({"HUDDLE_WORKERS": "3"}).workers == 3


@pytest.mark.parametrize("value", ["0", "257", "two"])
def test_a_bad_worker_count_stops_the_server(value: str) -> None:
    with pytest.raises(ConfigError, match="HUDDLE_WORKERS"):
        load_config({"HUDDLE_WORKERS": value})


def test_a_bad_workers_flag_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HUDDLE_WORKERS", "2")
    assert main(["serve", "--workers", "0"]) == 2
    assert "--workers 0 is out of range" in capsys.readouterr().err
