"""The pod's capture rules as one nftables table (pure: config in, `nft -f` text out).

One table of meshlet's own, `inet meshlet`, holding one NAT chain on the output
hook, so it covers IPv4 and IPv6 and touches nothing else in the pod. In order:

1. the proxy's own traffic (its uid, and gid when given) is never captured;
2. excluded destination CIDRs and ports pass untouched;
3. DNS (UDP and TCP port 53) to the pod's nameservers goes to the DNS port;
4. other TCP to the service CIDRs goes to the outbound port.

`apply_script` replaces the table in one transaction: nft runs a file as one
batch, and "add table; delete table; add table {...}" works whether or not the
table existed, so running it twice leaves the same rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshlet import defaults

TABLE = "meshlet"
FAMILY = "inet"
CHAIN = "output"
DNS_PORT = 53

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CaptureConfig:
    outbound_port: int = defaults.OUTBOUND_PORT
    dns_port: int = defaults.DNS_PORT
    service_cidrs: tuple[IPNetwork, ...] = (ipaddress.ip_network(defaults.SERVICE_CIDR),)
    dns_servers: tuple[IPAddress, ...] = ()
    proxy_uid: int = defaults.PROXY_UID
    proxy_gid: int | None = None
    exclude_ports: tuple[int, ...] = ()
    exclude_cidrs: tuple[IPNetwork, ...] = ()


def _set(items: Iterable[object]) -> str:
    return "{ " + ", ".join(str(i) for i in items) + " }"


def _by_family(items: Sequence[IPNetwork | IPAddress]) -> list[tuple[str, list[str]]]:
    """[("ip", [...v4...]), ("ip6", [...v6...])], each family present only when it has items."""
    out = []
    for version, keyword in ((4, "ip"), (6, "ip6")):
        members = sorted({str(i) for i in items if i.version == version}, key=_sort_key)
        if members:
            out.append((keyword, members))
    return out


def _sort_key(text: str) -> tuple[int, object]:
    # Numeric order for addresses and networks, so the output is stable and readable.
    network = ipaddress.ip_network(text, strict=False)
    return network.version, (network.network_address, network.prefixlen)


def build_rules(config: CaptureConfig) -> list[str]:
    """The chain's rules, one nft statement each, in evaluation order."""
    rules = [f'meta skuid {config.proxy_uid} return comment "the proxy\'s own traffic"']
    if config.proxy_gid is not None:
        rules.append(f'meta skgid {config.proxy_gid} return comment "the proxy\'s own traffic"')
    for keyword, cidrs in _by_family(config.exclude_cidrs):
        rules.append(f'{keyword} daddr {_set(cidrs)} return comment "excluded CIDRs"')
    if config.exclude_ports:
        ports = _set(sorted(set(config.exclude_ports)))
        rules.append(
            f'meta l4proto {{ tcp, udp }} th dport {ports} return comment "excluded ports"'
        )
    for keyword, servers in _by_family(config.dns_servers):
        for proto in ("udp", "tcp"):
            rules.append(
                f"{keyword} daddr {_set(servers)} {proto} dport {DNS_PORT} "
                f'redirect to :{config.dns_port} comment "DNS to the sidecar"'
            )
    for keyword, cidrs in _by_family(config.service_cidrs):
        rules.append(
            f"{keyword} daddr {_set(cidrs)} meta l4proto tcp "
            f'redirect to :{config.outbound_port} comment "services to the outbound proxy"'
        )
    return rules


def build_table(config: CaptureConfig) -> str:
    """The table as nft text: what `nft list table inet meshlet` shows, give or take spacing."""
    lines = [
        f"table {FAMILY} {TABLE} {{",
        f"\tchain {CHAIN} {{",
        "\t\ttype nat hook output priority -100; policy accept;",
        *(f"\t\t{rule}" for rule in build_rules(config)),
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _reset() -> str:
    # Creating the table first makes the delete valid when it did not exist.
    return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


def apply_script(config: CaptureConfig) -> str:
    """One `nft -f` transaction that replaces meshlet's table with `config`'s."""
    return _reset() + build_table(config)


def remove_script() -> str:
    """One `nft -f` transaction that deletes meshlet's table, if there is one, and nothing else."""
    return _reset()
