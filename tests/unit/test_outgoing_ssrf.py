"""SSRF guard: which addresses are refused, and the connector's resolve step."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp.abc import ResolveResult

from gateway.dispatcher.ssrf import (
    GuardedConnector,
    TargetRefused,
    is_refusal,
    make_connector,
    refusal_reason,
    vet_addresses,
)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.64.0.1", "shared/CGNAT"),
        ("100.127.255.254", "shared/CGNAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),
        ("192.0.2.10", "private"),  # documentation range, not routable
    ],
)
def test_non_public_addresses_are_refused_with_their_kind(address: str, reason: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111"]
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def _result(host: str) -> ResolveResult:
    return {"hostname": "h", "host": host, "port": 80, "family": 0, "proto": 0, "flags": 0}


def test_vetting_keeps_only_public_addresses() -> None:
    vetted = vet_addresses([_result("10.0.0.1"), _result("8.8.8.8")])
    assert [r["host"] for r in vetted] == ["8.8.8.8"]


def test_vetting_refuses_with_a_clear_reason() -> None:
    with pytest.raises(TargetRefused) as caught:
        vet_addresses([_result("127.0.0.1"), _result("::1")])
    assert str(caught.value) == (
        "target resolves to 127.0.0.1 (loopback), refused: set "
        "outgoing.allow_private_targets to allow"
    )


async def test_connector_refuses_a_loopback_literal() -> None:
    connector = GuardedConnector(dns_timeout=5.0)
    try:
        with pytest.raises(TargetRefused, match=r"127\.0\.0\.1 \(loopback\)"):
            await connector._resolve_host("127.0.0.1", 80)
    finally:
        await connector.close()


async def test_connector_refuses_localhost_after_resolving_it() -> None:
    connector = GuardedConnector(dns_timeout=5.0)
    try:
        with pytest.raises(TargetRefused, match=r"target resolves to (127\.0\.0\.1|::1) \("):
            await connector._resolve_host("localhost", 80)
    finally:
        await connector.close()


async def test_allow_private_targets_uses_a_plain_connector() -> None:
    open_connector = make_connector(allow_private_targets=True, limit=4, dns_timeout=5.0)
    guarded = make_connector(allow_private_targets=False, limit=4, dns_timeout=5.0)
    try:
        assert not isinstance(open_connector, GuardedConnector)
        assert isinstance(guarded, GuardedConnector)
        hosts = await open_connector._resolve_host("127.0.0.1", 80)
        assert hosts[0]["host"] == "127.0.0.1"
    finally:
        await open_connector.close()
        await guarded.close()


def test_refusal_is_found_inside_wrapping_errors() -> None:
    refused = TargetRefused("target resolves to 10.0.0.1 (private), refused")
    wrapper = ConnectionError("wrapped")
    wrapper.__cause__ = refused
    assert is_refusal(wrapper) == str(refused)
    assert is_refusal(ConnectionError("other")) is None


def test_a_refused_address_after_a_public_one_is_dropped_too() -> None:
    """aiohttp tries the next address when one fails: a name resolving to a dead public
    address and then the metadata service must never hand the latter over."""
    results = [_result("8.8.8.8"), _result("169.254.169.254"), _result("127.0.0.1")]
    results.append(_result("8.8.4.4"))
    assert [r["host"] for r in vet_addresses(results)] == ["8.8.8.8", "8.8.4.4"]
