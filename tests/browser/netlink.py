"""A browser behind a constrained link: a network namespace of the test's own, a veth
pair to it, and ``tc`` on the server's end (shared/recipes/browser-tests.md).

The server stays in this machine's namespace and listens on the veth address
too; browsers here reach that address locally (unshaped), the browser in the
namespace only over the veth pair, so shaping the pair's egress on our side
limits exactly that browser's downlink. Everything is removed on exit, and
only what this created is touched (names carry the process id).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: A /24 nothing else on this machine uses (the pair's two ends only).
SUBNET = "10.77.{n}"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=20)


@dataclass
class Link:
    """The namespace ``netns`` reached at ``peer_ip``; the server's end is ``server_ip``."""

    netns: str
    device: str  # our end of the pair: its egress is the namespace's downlink
    server_ip: str
    peer_ip: str
    peer_device: str = ""  # the namespace's end of the pair

    def limit(self, kbit: int) -> None:
        """Shape the namespace's downlink to ``kbit`` kbit/s (a token bucket, as a DSL line)."""
        _run(
            "tc", "qdisc", "replace", "dev", self.device, "root", "tbf",
            "rate", f"{kbit}kbit", "burst", "16kb", "latency", "300ms",
        )  # fmt: skip

    def lift(self) -> None:
        _run("tc", "qdisc", "del", "dev", self.device, "root", check=False)

    def move(self) -> str:
        """A network change: the namespace's end gets the next address and loses its
        own, as a phone moving from one network to another. Returns the new address."""
        prefix, last = self.peer_ip.rsplit(".", 1)
        new = f"{prefix}.{int(last) + 1}"
        inside = ("ip", "netns", "exec", self.netns)
        # Else removing the subnet's first address removes the second with it.
        _run(*inside, "sysctl", "-qw", f"net.ipv4.conf.{self.peer_device}.promote_secondaries=1")
        _run(*inside, "ip", "addr", "add", f"{new}/24", "dev", self.peer_device)
        _run(*inside, "ip", "addr", "del", f"{self.peer_ip}/24", "dev", self.peer_device)
        self.peer_ip = new
        return new

    def wrapper(self, folder: Path, executable: str) -> Path:
        """A script that runs ``executable`` inside the namespace (Playwright's executable_path;
        it talks to the browser over pipes, so the namespace doesn't get in the way)."""
        path = folder / f"chromium-{self.netns}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.netns} {executable} "$@"\n')
        path.chmod(0o755)
        return path


def available() -> str | None:
    """Why a constrained link cannot be made here, or None if it can."""
    if os.geteuid() != 0:
        return "root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool} command (iproute2)"
    return None


@contextlib.contextmanager
def constrained_namespace() -> Iterator[Link]:
    """A namespace linked to this one by a veth pair, removed on exit."""
    tag = os.getpid() % 10_000
    n = 100 + os.getpid() % 150
    netns, ours, theirs = f"hlow{tag}", f"hs{tag}", f"hl{tag}"
    server_ip, peer_ip = SUBNET.format(n=n) + ".1", SUBNET.format(n=n) + ".2"
    _run("ip", "netns", "del", netns, check=False)  # a leftover of a killed run
    _run("ip", "link", "del", ours, check=False)
    try:
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", ours, "type", "veth", "peer", "name", theirs)
        _run("ip", "link", "set", theirs, "netns", netns)
        # No IPv6 on the pair: its autoconfigured addresses would come a second or
        # two later, and a browser aborts loads in flight when addresses change
        # (net::ERR_NETWORK_CHANGED).
        _run("sysctl", "-qw", f"net.ipv6.conf.{ours}.disable_ipv6=1", check=False)
        _run("ip", "netns", "exec", netns, "sysctl", "-qw",
             f"net.ipv6.conf.{theirs}.disable_ipv6=1", check=False)  # fmt: skip
        _run("ip", "addr", "add", f"{server_ip}/24", "dev", ours)
        _run("ip", "link", "set", ours, "up")
        inside = ("ip", "netns", "exec", netns)
        _run(*inside, "ip", "addr", "add", f"{peer_ip}/24", "dev", theirs)
        _run(*inside, "ip", "link", "set", theirs, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        yield Link(netns, ours, server_ip, peer_ip, theirs)
    finally:
        _run("ip", "link", "del", ours, check=False)  # takes the other end with it
        _run("ip", "netns", "del", netns, check=False)
