"""Where a redirected connection was going: SO_ORIGINAL_DST and its IPv6 form.

nftables' `redirect` rewrites the destination to the proxy; conntrack remembers
the original, which the kernel hands back through getsockopt on the accepted
socket (SOL_IP / SO_ORIGINAL_DST for IPv4, SOL_IPV6 / IP6T_SO_ORIGINAL_DST for
IPv6; both are option 80 and return a sockaddr).
"""

from __future__ import annotations

import _socket
import socket
import struct

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


def destination_key(ip: str, port: int) -> bytes:
    """(ip, port) as the bytes `original_key` gives for it: the port, then the address."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return struct.pack("!H", port) + socket.inet_pton(family, ip)


def key_address(key: bytes) -> tuple[str, int]:
    """destination_key's inverse."""
    family = socket.AF_INET6 if len(key) == 18 else socket.AF_INET
    return socket.inet_ntop(family, key[2:]), struct.unpack_from("!H", key)[0]


def original_key(sock: _socket.socket, ipv6: bool) -> bytes | None:
    """Where the client connected to before the redirect, as destination_key bytes (a
    dict key with no parsing); None when conntrack knows nothing of the connection. A
    connection that was not redirected but is tracked gives the proxy's own address:
    the caller tells that apart."""
    try:
        if ipv6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6)
            return raw[2:4] + raw[8:24]
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
        return raw[2:8]
    except OSError:  # ENOENT: conntrack has no NAT entry for this connection
        return None
