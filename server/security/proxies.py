"""Which address a request came from, believing X-Forwarded-For only from trusted proxies.

Anyone can send ``X-Forwarded-For``; only the hops our own proxies appended are true. So
the list is read from the right (the hop nearest to us) and each address is believed only
while the hop that reported it is a trusted proxy: the first address that is not one of
ours is the client. With no trusted proxies configured the header is ignored entirely,
and a client cannot dodge a per-address rate limit by inventing addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

Network = IPv4Network | IPv6Network


def _address(text: str) -> IPv4Address | IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(address: str | None, trusted: Sequence[Network]) -> bool:
    parsed = _address(address or "")
    return parsed is not None and any(parsed in network for network in trusted)


def client_ip(
    remote_addr: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str:
    """The client's address: ``remote_addr``, or what trusted proxies say it was."""
    peer = remote_addr or "unknown"
    if not trusted or not forwarded_for or not is_trusted(peer, trusted):
        return peer
    client = peer
    for hop in reversed(forwarded_for.split(",")):
        parsed = _address(hop)
        if parsed is None:
            # A hop our proxy did not write (garbage from the client): stop at the last
            # address a trusted proxy vouched for.
            return client
        client = str(parsed)
        if not any(parsed in network for network in trusted):
            return client
    return client
