"""turn/turnserver.conf as shipped: hardened, and never relaying into private networks.

coturn's matching is emulated from its source (ns_turn_ioaddr.c,
``ioa_addr_in_range``/``addr_less_eq``): a bound of "any" (0.0.0.0 or ::) is
unbounded, addresses of another family never match a bounded side, and IPv6
bounds are compared byte by byte.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from tests.turn.coturn import OVERLAY_CONF, SHIPPED_CONF, write_config

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Every range the recipe (shared/recipes/coturn.md) names.
RECIPE_RANGES = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
    "::1/128",
    "64:ff9b::/96",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
]
# Public addresses a relay must still reach (never contacted by the tests).
PUBLIC = [
    "1.1.1.1",
    "8.8.8.8",
    "100.128.0.1",
    "172.32.0.1",
    "192.0.1.1",
    "193.0.0.1",
    "223.255.255.254",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "2a00:1450::1",
]


def options(path: Path) -> list[tuple[str, str | None]]:
    """(name, value) for each active line; comments and blanks skipped."""
    result: list[tuple[str, str | None]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        result.append((name.strip(), value.strip() if sep else None))
    return result


def values(path: Path, name: str) -> list[str | None]:
    return [value for key, value in options(path) if key == name]


def _address(text: str) -> Address:
    return ipaddress.ip_address(text)


def denied_ranges(path: Path) -> list[tuple[Address, Address]]:
    ranges = []
    for value in values(path, "denied-peer-ip"):
        assert value, "denied-peer-ip needs a value"
        low, _, high = value.partition("-")
        ranges.append((_address(low), _address(high or low)))
    return ranges


def _less_eq(a: Address, b: Address) -> bool:
    # coturn addr_less_eq: AF_INET (2) sorts before AF_INET6 (10); IPv6 byte-wise.
    if a.version != b.version:
        return a.version < b.version
    if a.version == 4:
        return int(a) <= int(b)
    return all(x <= y for x, y in zip(a.packed, b.packed, strict=True))


def coturn_in_range(low: Address, high: Address, address: Address) -> bool:
    """coturn's ioa_addr_in_range."""
    if low.is_unspecified or _less_eq(low, address):
        return high.is_unspecified or _less_eq(address, high)
    return False


def denied(ranges: list[tuple[Address, Address]], address: str) -> bool:
    return any(coturn_in_range(low, high, _address(address)) for low, high in ranges)


def test_emulation_matches_coturns_quirks() -> None:
    any6 = _address("::")
    assert coturn_in_range(any6, any6, _address("8.8.8.8"))  # why "::" must never appear
    v4 = (_address("10.0.0.0"), _address("10.255.255.255"))
    assert coturn_in_range(*v4, _address("10.1.2.3"))
    assert not coturn_in_range(*v4, _address("::ffff:10.1.2.3"))  # CVE-2026-27624
    assert not coturn_in_range(*v4, _address("2001:db8::1"))


def test_allow_loopback_peers_only_in_the_test_overlay(tmp_path: Path) -> None:
    assert "allow-loopback-peers" not in SHIPPED_CONF.read_text()
    assert ("allow-loopback-peers", None) in options(OVERLAY_CONF)
    # The config the coturn tests run: shipped + overlay, the hole only for 127.0.0.1.
    combined = write_config(tmp_path, port=3478, relay=(40000, 40010), allow_loopback_peer=True)
    assert values(combined, "allowed-peer-ip") == ["127.0.0.1"]
    assert values(combined, "listening-ip") == ["127.0.0.1"]
    assert values(combined, "relay-ip") == ["127.0.0.1"]
    closed = write_config(tmp_path, port=3478, relay=(40000, 40010), allow_loopback_peer=False)
    assert values(closed, "allowed-peer-ip") == []


def test_shipped_config_punches_no_hole_in_the_deny_list() -> None:
    names = {name for name, _ in options(SHIPPED_CONF)}
    for dangerous in (
        "allow-loopback-peers",
        "allowed-peer-ip",
        "no-auth",
        "server-relay",
        "cli-password",
        "web-admin",
        "static-auth-secret",  # no shared default secret; see turn/README.md
        "lt-cred-mech",
        "secure-stun",  # would break browsers' STUN binding requests
    ):
        assert dangerous not in names, dangerous


@pytest.mark.parametrize("cidr", RECIPE_RANGES)
def test_deny_list_covers_each_recipe_range(cidr: str) -> None:
    ranges = denied_ranges(SHIPPED_CONF)
    network: Network = ipaddress.ip_network(cidr)
    samples = {network.network_address, network.broadcast_address}
    samples.add(network.network_address + network.num_addresses // 2)
    samples.add(network.network_address + min(network.num_addresses - 1, 12345))
    for address in samples:
        assert denied(ranges, str(address)), f"{address} ({cidr}) is not denied"


def test_ipv4_mapped_private_addresses_are_denied() -> None:
    ranges = denied_ranges(SHIPPED_CONF)
    for address in ("::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254"):
        assert denied(ranges, address), address


def test_each_range_is_a_whole_cidr_block() -> None:
    # With coturn's byte-wise IPv6 comparison a first-last range means exactly
    # its CIDR block only when it is one; anything else would leak or over-block.
    for low, high in denied_ranges(SHIPPED_CONF):
        blocks = list(ipaddress.summarize_address_range(low, high))
        assert len(blocks) == 1, f"{low}-{high} is not one CIDR block: {blocks}"
        assert not low.is_unspecified or low.version == 4, "never '::' as a bound"


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_stay_reachable(address: str) -> None:
    assert not denied(denied_ranges(SHIPPED_CONF), address)


def test_hardening_lines() -> None:
    flags = {name for name, value in options(SHIPPED_CONF) if value is None}
    for flag in (
        "use-auth-secret",
        "fingerprint",
        "no-cli",
        "no-tlsv1",
        "no-tlsv1_1",
        "no-multicast-peers",
        "no-tcp-relay",
        "no-software-attribute",
    ):
        assert flag in flags, flag
    assert values(SHIPPED_CONF, "realm") and values(SHIPPED_CONF, "realm")[0]
    assert values(SHIPPED_CONF, "stale-nonce") == ["600"]
    assert values(SHIPPED_CONF, "user-quota") == ["12"]
    assert values(SHIPPED_CONF, "total-quota") == ["1200"]
    (low,) = values(SHIPPED_CONF, "min-port")
    (high,) = values(SHIPPED_CONF, "max-port")
    assert low is not None and high is not None
    assert 1024 < int(low) < int(high) <= 65535


def test_tls_certificate_lines_are_commented_with_instructions() -> None:
    text = SHIPPED_CONF.read_text()
    assert "cert" not in {name for name, _ in options(SHIPPED_CONF)}
    assert "pkey" not in {name for name, _ in options(SHIPPED_CONF)}
    assert "\n#cert=/" in text and "\n#pkey=/" in text
    assert "uncomment" in text
