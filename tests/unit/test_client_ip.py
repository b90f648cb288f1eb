"""Client address behind trusted proxies: X-Forwarded-For/Proto believed only from them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.ingest.client_ip import ClientAddressResolver, normalize_ip, parse_ip

PROXIES = ClientAddressResolver(["10.0.0.0/8", "2001:db8:ffff::/48", "192.0.2.7"])
NO_PROXIES = ClientAddressResolver([])


def test_no_trusted_proxies_returns_the_peer_and_ignores_headers() -> None:
    assert NO_PROXIES.resolve("198.51.100.9", "1.1.1.1", "https") == ("198.51.100.9", "http")
    assert NO_PROXIES.resolve("198.51.100.9", None, None, "https") == ("198.51.100.9", "https")
    assert not NO_PROXIES.enabled


def test_forged_headers_from_an_untrusted_peer_are_ignored() -> None:
    assert PROXIES.resolve("203.0.113.5", "1.2.3.4, 10.0.0.1", "https") == (
        "203.0.113.5",
        "http",
    )


def test_client_behind_one_trusted_proxy() -> None:
    assert PROXIES.resolve("10.0.0.1", "203.0.113.5", "https") == ("203.0.113.5", "https")


def test_walk_right_to_left_skipping_trusted_hops() -> None:
    # The client forged "1.2.3.4"; the edge proxy appended the real peer 203.0.113.5.
    xff = "1.2.3.4, 203.0.113.5, 10.1.2.3, 10.9.9.9"
    assert PROXIES.resolve("10.0.0.1", xff, None) == ("203.0.113.5", "http")


def test_all_hops_trusted_gives_the_leftmost() -> None:
    assert PROXIES.resolve("10.0.0.1", "10.5.5.5, 10.6.6.6", None) == ("10.5.5.5", "http")


def test_no_forwarded_for_from_trusted_peer_is_the_peer() -> None:
    assert PROXIES.resolve("10.0.0.1", None, None) == ("10.0.0.1", "http")
    assert PROXIES.resolve("10.0.0.1", " , ", None) == ("10.0.0.1", "http")


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        ("garbage", "10.0.0.1"),  # a trusted hop wrote garbage: the peer is all we know
        ("unknown, 10.4.4.4", "10.4.4.4"),  # the nearest address we could establish
        ("203.0.113.5, garbage", "10.0.0.1"),  # garbage stops the walk; no forged left part
        ("203.0.113.5,,10.4.4.4", "203.0.113.5"),  # empty list elements are skipped
        ("999.1.1.1", "10.0.0.1"),
        ("[2001:db8::1]:443, 10.4.4.4", "2001:db8::1"),
        ('"[2001:db8::2]"', "2001:db8::2"),
        ("203.0.113.5:5050", "203.0.113.5"),
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("fe80::1%eth0", "fe80::1"),
        ("[::1", "10.0.0.1"),
        ("1.2.3.4:http", "10.0.0.1"),
    ],
)
def test_malformed_and_unusual_entries(xff: str, client: str) -> None:
    assert PROXIES.resolve("10.0.0.1", xff, None)[0] == client


def test_overlong_chain_stops_at_the_hop_limit() -> None:
    xff = ", ".join(["203.0.113.5"] + [f"10.0.0.{i}" for i in range(1, 41)])
    client, _ = PROXIES.resolve("10.0.0.1", xff, None)
    assert client is not None and client.startswith("10.0.0.")


def test_ipv6_peer_and_ipv4_mapped_peer_are_matched() -> None:
    assert PROXIES.resolve("2001:db8:ffff::1", "203.0.113.5", None)[0] == "203.0.113.5"
    assert PROXIES.resolve("::ffff:10.0.0.1", "203.0.113.5", None)[0] == "203.0.113.5"
    assert PROXIES.resolve("::ffff:192.0.2.7", "2001:db8::9", None)[0] == "2001:db8::9"
    assert PROXIES.resolve("2001:db8:aaaa::1", "203.0.113.5", None)[0] == "2001:db8:aaaa::1"


def test_peer_normalization() -> None:
    assert PROXIES.resolve("::ffff:198.51.100.1", None, None)[0] == "198.51.100.1"
    assert PROXIES.resolve("fe80::1%lo", None, None)[0] == "fe80::1"
    assert PROXIES.resolve(None, "1.2.3.4", "https") == (None, "http")
    assert PROXIES.resolve("not-an-ip", "1.2.3.4", None) == (None, "http")
    assert normalize_ip("") is None and normalize_ip("2001:DB8::1") == "2001:db8::1"


@pytest.mark.parametrize(
    ("xff", "xfp", "scheme"),
    [
        ("203.0.113.5", "https", "https"),
        ("203.0.113.5", "HTTPS", "https"),
        ("203.0.113.5", "ftp", "http"),
        ("203.0.113.5", "", "http"),
        # One value per hop (appending proxies): the client hop's value.
        ("203.0.113.5, 10.2.2.2", "https, http", "https"),
        # Counts differ: the value written by the nearest (trusted) proxy.
        ("203.0.113.5", "https, http", "http"),
    ],
)
def test_forwarded_proto(xff: str, xfp: str, scheme: str) -> None:
    assert PROXIES.resolve("10.0.0.1", xff, xfp) == ("203.0.113.5", scheme)


def test_proto_without_forwarded_for() -> None:
    assert PROXIES.resolve("10.0.0.1", None, "https") == ("10.0.0.1", "https")


def test_resolve_headers_joins_repeated_headers() -> None:
    headers = CIMultiDict(
        [("X-Forwarded-For", "1.2.3.4"), ("x-forwarded-for", "203.0.113.5, 10.3.3.3")]
    )
    proxy = CIMultiDictProxy(headers)
    assert PROXIES.resolve_headers("10.0.0.1", proxy) == ("203.0.113.5", "http")
    assert PROXIES.resolve_headers("10.0.0.1", {"x-forwarded-for": "203.0.113.6"}) == (
        "203.0.113.6",
        "http",
    )
    assert PROXIES.resolve_headers("203.0.113.1", proxy, "https") == ("203.0.113.1", "https")


def test_invalid_network_is_an_error() -> None:
    with pytest.raises(ValueError):
        ClientAddressResolver(["not-a-cidr"])


def test_parse_ip_shapes() -> None:
    assert str(parse_ip(" [2001:db8::1]:8080 ")) == "2001:db8::1"
    assert parse_ip("[2001:db8::1]:x") is None
    assert parse_ip("") is None


IP_TEXT = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:{443}"),
    st.text(max_size=20),
    st.sampled_from(["unknown", "_hidden", '"', "[", "]:", "::ffff:10.0.0.1", "10.0.0.1"]),
)


@settings(max_examples=300, deadline=None)
@given(
    peer=st.one_of(st.none(), IP_TEXT),
    xff=st.one_of(st.none(), st.lists(IP_TEXT, max_size=6).map(", ".join), st.text()),
    xfp=st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["https", "http, https"])),
)
def test_resolve_never_raises_and_returns_storable_values(peer: Any, xff: Any, xfp: Any) -> None:
    for resolver in (PROXIES, NO_PROXIES):
        client, scheme = resolver.resolve(peer, xff, xfp)
        assert scheme in ("http", "https")
        assert client is None or parse_ip(client) is not None
        assert client is None or "%" not in client
        if resolver is NO_PROXIES or peer is None or parse_ip(peer) is None:
            assert client == normalize_ip(peer)


@settings(max_examples=200, deadline=None)
@given(
    real=st.ip_addresses(v=4).filter(lambda a: not a.is_private),
    forged=st.lists(st.ip_addresses().map(str), max_size=3),
    proxies=st.lists(st.integers(0, 255), max_size=3),
)
def test_untrusted_left_part_can_never_win(
    real: Any, forged: list[str], proxies: list[int]
) -> None:
    xff = ", ".join([*forged, str(real), *(f"10.0.1.{p}" for p in proxies)])
    assert PROXIES.resolve("10.0.0.1", xff, None)[0] == str(real)
