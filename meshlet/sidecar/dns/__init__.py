"""The sidecar's DNS: mesh names answered from precomputed bytes, the rest forwarded.
(The pod's resolv.conf is read by meshlet/resolv.py, which `meshlet init` shares.)

table.py      NameTable -> DnsTable: every local answer as wire bytes (pure)
answer.py     the hot path: query bytes -> response bytes | Forward | None (pure)
cache.py      upstream queries, reading their answers, the answer cache (pure)
forwarder.py  UDP then TCP to the upstreams, retries, timeout, coalescing
server.py     UDP + TCP listeners on one address
tcp.py        TCP connections, their table, flow control
tcp_clock.py  TCP idle and per-message deadlines, who gives way when full (pure)
"""

from meshlet.resolv import (
    ResolvConf,
    parse_address,
    parse_resolv_conf,
    read_resolv_conf,
)
from meshlet.sidecar.dns.answer import Forward, answer
from meshlet.sidecar.dns.forwarder import Forwarder
from meshlet.sidecar.dns.observe import OnQuery
from meshlet.sidecar.dns.server import DnsServer
from meshlet.sidecar.dns.stats import QueryCounts
from meshlet.sidecar.dns.table import DnsTable, build_dns_table

__all__ = [
    "DnsServer",
    "DnsTable",
    "Forward",
    "Forwarder",
    "OnQuery",
    "QueryCounts",
    "ResolvConf",
    "answer",
    "build_dns_table",
    "parse_address",
    "parse_resolv_conf",
    "read_resolv_conf",
]
