"""``HUDDLE_WORKERS`` and ``huddle serve --workers``: the number of cores by default,
bounded, and the flag over the variable; what the front hands its workers, and
the node load that counts them."""

from __future__ import annotations

import logging
import os
import pickle

import pytest

from media.workers.protocol import WorkerSpec
from server.cli import main
from server.config import ConfigError, load_config
from server.wiring.media import media_config
from signaling.load import LoadMeter, MediaLoad


def test_workers_default_to_the_cores_this_process_may_use() -> None:
    assert load_config({}).workers == len(os.sched_getaffinity(0))
    assert load_config({"HUDDLE_WORKERS": "3"}).workers == 3


def test_one_worker_runs_in_the_front_unless_asked_for_a_process() -> None:
    assert load_config({"HUDDLE_WORKERS": "1"}).sfu_in_process
    assert not load_config({"HUDDLE_WORKERS": "1", "HUDDLE_SFU_IN_PROCESS": "0"}).sfu_in_process
    with pytest.raises(ConfigError, match="HUDDLE_SFU_IN_PROCESS"):
        load_config({"HUDDLE_SFU_IN_PROCESS": "maybe"})


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


def test_a_node_with_workers_weighs_their_cpu_and_packets() -> None:
    # Between two samples 1 s apart the front used 0.1 s of CPU, its workers 0.5 s.
    clock, cpu = iter([0.0, 1.0, 2.0]), iter([0.0, 0.0, 0.1])
    loads = iter(
        [
            MediaLoad({"c1": 3}, forwarded_packets=0, worker_cpu_s=1.0),
            MediaLoad({"c1": 3}, forwarded_packets=2000, worker_cpu_s=1.5),
        ]
    )
    meter = LoadMeter(lambda: next(loads), clock=lambda: next(clock), cpu_clock=lambda: next(cpu))
    meter.sample(frozenset({"c1"}), {}, draining=False)
    load = meter.sample(frozenset({"c1"}), {}, draining=False)
    assert (load.participants, load.pps, load.cpu) == (3, 2000.0, 60.0)


def test_the_workers_get_the_fronts_resolved_media_settings() -> None:
    config = load_config(
        {
            "HUDDLE_ICE_HOSTS": "127.0.0.1",
            "HUDDLE_ICE_PORTS": "40000-40099",
            "HUDDLE_PUBLIC_IP": "203.0.113.7",
            "HUDDLE_TURN_URIS": "turn:turn.example.org:3478",
            "HUDDLE_TURN_SECRET": "a-turn-secret-long-enough",
        }
    )
    spec = WorkerSpec(1, media_config(config), logging.INFO)
    copy: WorkerSpec = pickle.loads(pickle.dumps(spec))  # as the worker reads its stdin
    assert copy.media == spec.media and copy.media.announced_ip == "203.0.113.7"
    assert copy.media.ice_ports == (40000, 40099)
    assert copy.media.ice_servers_provider is not None
    (server,) = copy.media.ice_servers_provider()
    assert server.urls == ("turn:turn.example.org:3478",) and server.username


def test_the_workers_start_up_cpu_is_not_load() -> None:
    clock, cpu = iter([0.0, 10.0, 11.0]), iter([0.0, 0.0, 0.0])
    meter = LoadMeter(clock=lambda: next(clock), cpu_clock=lambda: next(cpu))
    worker_cpu = iter([4.0, 4.2])  # 4 s of imports before they were up
    meter.attach(lambda: MediaLoad({}, worker_cpu_s=next(worker_cpu)))
    assert meter.sample(frozenset(), {}, draining=False).cpu == 20.0
