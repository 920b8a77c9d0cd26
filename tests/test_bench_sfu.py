"""The SFU benchmark's arithmetic, its Huddle/Janus table and its Janus configuration.

None of this needs Janus installed: the benchmark itself runs it
(``make bench-janus``); here only what the numbers and files are made of.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.sfu import compare
from bench.sfu.janus import NETNS_HOST, NETNS_INTERFACE, netns_command, room_number, write_config
from bench.sfu.run import Measurement, derive

WINDOW = 10.0


def point(scenario: str, n: int, core: float, packets_per_s: float, **extra: Any) -> Measurement:
    m = Measurement(
        scenario=scenario,
        subscribers=n,
        streams=n,
        window_s=WINDOW,
        server_cpu_s=core * WINDOW,
        generator_cpu_s=0.0,
        packets=int(packets_per_s * WINDOW),
        video_packets=int(packets_per_s * WINDOW),
        audio_packets=0,
        lost=0,
        fps_mean=30.0,
        fps_min=30.0,
        load_before=(0.1, 0.1, 0.1),
        load_after=(0.1, 0.1, 0.1),
        receiving=n,
    )
    for key, value in extra.items():
        setattr(m, key, value)
    return m


def test_derive_reports_marginal_fixed_receive_and_setup_costs() -> None:
    points = [
        point("fanout", 0, 0.02, 0),
        point("fanout", 1, 0.03, 100, setup={"joined": 1, "cpu_ms_per_subscriber": 6.0}),
        point(
            "fanout",
            8,
            0.10,
            800,
            setup={"joined": 7, "cpu_ms_per_subscriber": 4.0},
            late_join={"video_keyframe_s": 0.05, "video_s": 0.06},
        ),
        # 10 publishers alone in their calls (--publishers 10)
        point(
            "publishers",
            0,
            0.11,
            0,
            streams=10,
            receive_timing={"datagrams": 12_000, "us_per_datagram": 9.5},
        ),
    ]
    out = derive(points, idle_core=0.01)
    # (0.10 - 0.03) of a core over 700 more packets/s
    assert out["marginal_us_per_packet"] == pytest.approx(100.0)
    assert out["fixed_core_1_to_1"] == pytest.approx(0.03)
    # (0.11 - 0.01) of a core for 10 publishers at the 100 packets/s one subscriber receives
    assert out["receive_us_per_incoming_packet"] == pytest.approx(100.0)
    assert out["receive_publishers"] == 10
    assert out["receive_in_process_us_per_datagram"] == pytest.approx(9.5)
    # weighted by subscribers joined: (1 * 6 + 7 * 4) / 8
    assert out["setup_cpu_ms_per_subscriber"] == pytest.approx(4.25)
    assert out["late_join_first_keyframe_s"][8] == pytest.approx(0.05)
    assert "fanout_av" not in out


def test_derive_keeps_the_opus_series_apart() -> None:
    points = [
        point("fanout", 1, 0.03, 100),
        point("fanout", 8, 0.10, 800),
        point("fanout_av", 1, 0.05, 150),
        point("fanout_av", 8, 0.15, 1200),
    ]
    out = derive(points)
    assert "receive_us_per_incoming_packet" not in out  # no --publishers run
    assert out["marginal_us_per_packet"] == pytest.approx(100.0)
    assert out["fanout_av"]["marginal_us_per_packet"] == pytest.approx(0.10 / 1050 * 1e6)


def run_file(tmp_path: Path, name: str, mode: str, cores: dict[int, float], **server: Any) -> str:
    measurements = []
    for n, core in cores.items():
        m = point("fanout", n, core, 100 * n)
        measurements.append({**m.__dict__, "server_core": core, "loss": 0.0})
    run = {
        "mode": mode,
        "server": {"mode": mode, **server},
        "measurements": measurements,
        "derived": derive([point("fanout", n, c, 100 * n) for n, c in cores.items()]),
        "window_s": WINDOW,
        "conditions": {"load_when_started": [0.5, 0.5, 0.5]},
    }
    path = tmp_path / name
    path.write_text(json.dumps(run))
    return str(path)


def test_compare_prints_reference_over_other(tmp_path: Path, capsys: Any) -> None:
    huddle = run_file(tmp_path, "h.json", "huddle", {1: 0.02, 8: 0.08})
    janus = run_file(
        tmp_path, "j.json", "janus", {1: 0.01, 8: 0.04}, janus_version="1.1.2", event_loops=1
    )
    assert compare.main([huddle, janus]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "Huddle" in header and "Janus 1.1.2 (event_loops 1)" in header
    row = next(line for line in out.splitlines() if "server core %, 1 → 8" in line)
    # Huddle 8.0% vs Janus 4.0%: ratio Huddle / Janus = 2
    assert row.split("|")[3].strip() == "8.00"
    assert row.split("|")[5].strip() == "2.00x"
    assert "all points clean" in out


def test_compare_flags_points_that_lost_packets() -> None:
    run = {
        "measurements": [
            {"scenario": "room", "subscribers": 6, "loss": 0.02, "fps_min": 30.0, "receiving": 6},
            {"scenario": "fanout", "subscribers": 8, "loss": 0.0, "fps_min": 12.0, "receiving": 7},
        ]
    }
    assert compare.health(run) == [
        "room 6: loss 2.0%",
        "fanout 8: worst 12.0 fps",
        "fanout 8: 7/8 receiving",
    ]


def test_janus_config_loads_only_videoroom_and_http_on_loopback(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for sub, name in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
        (lib / sub).mkdir(parents=True)
        (lib / sub / name).write_bytes(b"")
    conf = tmp_path / "conf"
    config = write_config(conf, 18088, event_loops=1, lib=lib)
    main = config.read_text()
    assert f'plugins_folder = "{conf}/plugins"' in main
    assert "event_loops = 1" in main
    assert "stun_server" not in main.replace("# no stun_server", "")
    assert f'ice_enforce_list = "{NETNS_INTERFACE}"' in main
    assert "ipv6 = false" in main
    assert sorted(p.name for p in (conf / "plugins").iterdir()) == ["libjanus_videoroom.so"]
    assert sorted(p.name for p in (conf / "transports").iterdir()) == ["libjanus_http.so"]
    http = (conf / "janus.transport.http.jcfg").read_text()
    assert 'ip = "127.0.0.1"' in http and "port = 18088" in http
    assert "admin_http = false" in http
    # Janus's default threading when no event_loops is given
    assert "event_loops" not in write_config(tmp_path / "d", 1, lib=lib).read_text()


def test_netns_command_gives_the_namespace_one_loopback_address() -> None:
    cmd = netns_command(["python", "-m", "x"])
    assert cmd[:3] == ["unshare", "--net", "--"]
    assert f"ip addr add {NETNS_HOST}/32 dev {NETNS_INTERFACE}" in cmd[5]
    assert NETNS_HOST.startswith("127.")
    assert cmd[-3:] == ["python", "-m", "x"]
    assert room_number("room6") == room_number("room6") != room_number("room10")
