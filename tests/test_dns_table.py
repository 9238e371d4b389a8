"""DNS answers from the name table, as tables of queries and zone-file text.

In the style of CoreDNS's plugin/kubernetes/handler_test.go: each case is a
query (name, type, the sidecar's namespace) and the expected rcode and sections
written as zone-file lines. Queries are built and responses parsed with dnslib,
independently of meshlet's own encoder.
"""

# ruff: noqa: E501  (zone-file lines are data: one record per line reads best)
from __future__ import annotations

import struct
from dataclasses import dataclass

import dnslib
import pytest

from meshlet._proto.meshlet.v1.nametable_pb2 import NameInfo, NameTable, Port
from meshlet.sidecar.dns.answer import Forward, answer, lookup
from meshlet.sidecar.dns.table import DnsTable, DnsTables, build_dns_table

SOA = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
SOA_V4 = (
    "in-addr.arpa. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
)
FORWARD = "FORWARD"


def service(
    ips: list[str] | None = None,
    ports: list[tuple[str, int, str]] | None = None,
    *,
    namespace: str = "",
    name: str = "",
    headless: bool = False,
    cname: str = "",
) -> NameInfo:
    return NameInfo(
        ips=ips or [],
        cname=cname,
        ports=[Port(name=n, port=p, protocol=proto) for n, p, proto in ports or []],
        namespace=namespace,
        service=name,
        headless=headless,
    )


def mesh_table() -> NameTable:
    """The services every case below asks about."""
    table = NameTable()
    entries = {
        "web.default": service(["10.96.0.10"], [("http", 80, "tcp"), ("dns", 53, "udp")]),
        "dual.default": service(["10.96.0.11", "fd00:10:96::11"], [("http", 80, "tcp")]),
        "v6.prod": service(["fd00:10:96::12"], [("grpc", 9090, "tcp")]),
        "api.prod": service(["10.96.1.20"], [("https", 443, "tcp")]),
        "web.prod": service(["10.96.2.30"], [("http", 80, "tcp")]),
        "db.data": service(
            ["10.244.1.5", "10.244.2.6", "fd00:244::7"], [("pg", 5432, "tcp")], headless=True
        ),
        "db-0.db.data": service(["10.244.1.5"]),
        "ext.default": service(cname="example.com", ports=[("http", 80, "tcp")]),
        "empty.default": service([], [("http", 80, "tcp")], headless=True),
    }
    for short, info in entries.items():
        svc, _, ns = short.rpartition(".")
        if short.count(".") == 2:  # a pod hostname entry: <hostname>.<svc>.<ns>
            svc, ns = short.split(".")[1:]
        info.namespace, info.service = ns, svc
        table.table[f"{short}.svc.cluster.local"].CopyFrom(info)
    return table


@dataclass(frozen=True)
class Case:
    qname: str
    qtype: str
    rcode: str = "NOERROR"
    answer: str = ""
    authority: str = ""
    additional: str = ""
    namespace: str = "default"


def case(qname: str, qtype: str, rcode: str = "NOERROR", **kwargs: str) -> Case:
    return Case(qname, qtype, rcode, **kwargs)


CASES = [
    # --- A, AAAA, dual stack, and NODATA (never NXDOMAIN) for the other family --------
    case(
        "web.default.svc.cluster.local",
        "A",
        answer="web.default.svc.cluster.local. 5 IN A 10.96.0.10",
    ),
    case("web.default.svc.cluster.local", "AAAA", authority=SOA),
    case(
        "dual.default.svc.cluster.local",
        "A",
        answer="dual.default.svc.cluster.local. 5 IN A 10.96.0.11",
    ),
    case(
        "dual.default.svc.cluster.local",
        "AAAA",
        answer="dual.default.svc.cluster.local. 5 IN AAAA fd00:10:96::11",
    ),
    case(
        "v6.prod.svc.cluster.local",
        "AAAA",
        answer="v6.prod.svc.cluster.local. 5 IN AAAA fd00:10:96::12",
    ),
    case("v6.prod.svc.cluster.local", "A", authority=SOA),
    case("web.default.svc.cluster.local", "MX", authority=SOA),
    case("web.default.svc.cluster.local", "TXT", authority=SOA),
    # --- Short names, relative to the sidecar's namespace -----------------------------
    case("web", "A", answer="web. 5 IN A 10.96.0.10"),
    case("web", "A", answer="web. 5 IN A 10.96.2.30", namespace="prod"),
    case("web.default", "A", answer="web.default. 5 IN A 10.96.0.10"),
    case("web.default.svc", "A", answer="web.default.svc. 5 IN A 10.96.0.10"),
    case("web.prod", "A", answer="web.prod. 5 IN A 10.96.2.30"),
    case("web.prod.svc", "A", answer="web.prod.svc. 5 IN A 10.96.2.30"),
    case("api.prod", "A", answer="api.prod. 5 IN A 10.96.1.20"),
    case("api", "A", FORWARD),  # not in the sidecar's namespace: not a bare name of ours
    case("api", "A", answer="api. 5 IN A 10.96.1.20", namespace="prod"),
    case("dual", "AAAA", answer="dual. 5 IN AAAA fd00:10:96::11"),
    case("web.default", "AAAA"),  # NODATA; no SOA: a short name is in no zone of ours
    case("web.default.svc", "MX"),
    case("nope.default", "A", FORWARD),  # unknown short names are not under the domain
    case("db-0.db.data", "A", answer="db-0.db.data. 5 IN A 10.244.1.5"),
    # --- What a glibc search path makes of them ---------------------------------------
    case("web.svc.cluster.local", "A", "NXDOMAIN", authority=SOA),
    case("web.cluster.local", "A", "NXDOMAIN", authority=SOA),
    case("nope.default.svc.cluster.local", "A", "NXDOMAIN", authority=SOA),
    case("nope.default.svc.cluster.local", "AAAA", "NXDOMAIN", authority=SOA),
    case("example.com.default.svc.cluster.local", "A", "NXDOMAIN", authority=SOA),
    case("web.default.svc.cluster.local.default.svc.cluster.local", "A", "NXDOMAIN", authority=SOA),
    case("web.nons.svc.cluster.local", "A", "NXDOMAIN", authority=SOA),
    # --- Pod names, as CoreDNS's `pods insecure`: the IP the name spells ----------------
    case(
        "10-244-1-5.data.pod.cluster.local",
        "A",
        answer="10-244-1-5.data.pod.cluster.local. 5 IN A 10.244.1.5",
    ),
    case("10-244-1-5.data.pod.cluster.local", "AAAA", authority=SOA),
    case(
        "fd00-244--7.anyns.pod.cluster.local",
        "AAAA",
        answer="fd00-244--7.anyns.pod.cluster.local. 5 IN AAAA fd00:244::7",
    ),
    case("data.pod.cluster.local", "A", authority=SOA),
    case("pod.cluster.local", "A", authority=SOA),
    case("not-an-ip.data.pod.cluster.local", "A", "NXDOMAIN", authority=SOA),
    case("10-244-1-5.x.data.pod.cluster.local", "A", "NXDOMAIN", authority=SOA),
    # --- Empty non-terminals and the apex exist (RFC 8020): NODATA -------------------
    case("svc.cluster.local", "A", authority=SOA),
    case("default.svc.cluster.local", "A", authority=SOA),
    case("_tcp.web.default.svc.cluster.local", "SRV", authority=SOA),
    case("cluster.local", "A", authority=SOA),
    case(
        "cluster.local",
        "SOA",
        answer="cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5",
    ),
    # --- Everything else is forwarded -------------------------------------------------
    case("example.com", "A", FORWARD),
    case("xcluster.local", "A", FORWARD),  # a suffix, but not on a label boundary
    case("cluster.local.example.com", "A", FORWARD),
    case("local", "A", FORWARD),
    case("9.9.9.9.in-addr.arpa", "PTR", FORWARD),  # an IP we do not know
    # --- SRV, with the targets' addresses as additional records ----------------------
    case(
        "_http._tcp.web.default.svc.cluster.local",
        "SRV",
        answer="_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local.",
        additional="web.default.svc.cluster.local. 5 IN A 10.96.0.10",
    ),
    case(
        "_dns._udp.web.default.svc.cluster.local",
        "SRV",
        answer="_dns._udp.web.default.svc.cluster.local. 5 IN SRV 0 100 53 web.default.svc.cluster.local.",
        additional="web.default.svc.cluster.local. 5 IN A 10.96.0.10",
    ),
    case("_dns._tcp.web.default.svc.cluster.local", "SRV", "NXDOMAIN", authority=SOA),
    case("_http._tcp.web.default.svc.cluster.local", "A", authority=SOA),
    case(
        "_http._tcp.web",
        "SRV",
        answer="_http._tcp.web. 5 IN SRV 0 100 80 web.default.svc.cluster.local.",
        additional="web.default.svc.cluster.local. 5 IN A 10.96.0.10",
    ),
    case(
        "_http._tcp.dual.default.svc.cluster.local",
        "SRV",
        answer="_http._tcp.dual.default.svc.cluster.local. 5 IN SRV 0 100 80 dual.default.svc.cluster.local.",
        additional="""
            dual.default.svc.cluster.local. 5 IN A 10.96.0.11
            dual.default.svc.cluster.local. 5 IN AAAA fd00:10:96::11
        """,
    ),
    # A headless service: one SRV per ready pod, named by its hostname or its address.
    case(
        "_pg._tcp.db.data.svc.cluster.local",
        "SRV",
        answer="""
            _pg._tcp.db.data.svc.cluster.local. 5 IN SRV 0 33 5432 db-0.db.data.svc.cluster.local.
            _pg._tcp.db.data.svc.cluster.local. 5 IN SRV 0 33 5432 10-244-2-6.db.data.svc.cluster.local.
            _pg._tcp.db.data.svc.cluster.local. 5 IN SRV 0 33 5432 fd00-244--7.db.data.svc.cluster.local.
        """,
        additional="""
            db-0.db.data.svc.cluster.local. 5 IN A 10.244.1.5
            10-244-2-6.db.data.svc.cluster.local. 5 IN A 10.244.2.6
            fd00-244--7.db.data.svc.cluster.local. 5 IN AAAA fd00:244::7
        """,
    ),
    case(
        "_http._tcp.ext.default.svc.cluster.local",
        "SRV",
        answer="_http._tcp.ext.default.svc.cluster.local. 5 IN SRV 0 100 80 example.com.",
    ),
    # A headless service without ready pods: its named port's SRV name exists, no records.
    case("_http._tcp.empty.default.svc.cluster.local", "SRV", authority=SOA),
    # --- Headless: the ready pod IPs, and the pods' own names -------------------------
    case(
        "db.data.svc.cluster.local",
        "A",
        answer="""
            db.data.svc.cluster.local. 5 IN A 10.244.1.5
            db.data.svc.cluster.local. 5 IN A 10.244.2.6
        """,
    ),
    case(
        "db.data.svc.cluster.local",
        "AAAA",
        answer="db.data.svc.cluster.local. 5 IN AAAA fd00:244::7",
    ),
    case(
        "db-0.db.data.svc.cluster.local",
        "A",
        answer="db-0.db.data.svc.cluster.local. 5 IN A 10.244.1.5",
    ),
    case("db-0.db.data.svc.cluster.local", "AAAA", authority=SOA),
    case(
        "10-244-2-6.db.data.svc.cluster.local",
        "A",
        answer="10-244-2-6.db.data.svc.cluster.local. 5 IN A 10.244.2.6",
    ),
    case("db-9.db.data.svc.cluster.local", "A", "NXDOMAIN", authority=SOA),
    case("empty.default.svc.cluster.local", "A", authority=SOA),
    case("empty", "AAAA"),
    # --- PTR for ClusterIPs and pod IPs, v4 and v6 --------------------------------------
    case(
        "10.0.96.10.in-addr.arpa",
        "PTR",
        answer="10.0.96.10.in-addr.arpa. 5 IN PTR web.default.svc.cluster.local.",
    ),
    case(
        "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa",
        "PTR",
        answer="1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa. 5 IN PTR dual.default.svc.cluster.local.",
    ),
    case(
        "5.1.244.10.in-addr.arpa",
        "PTR",
        answer="5.1.244.10.in-addr.arpa. 5 IN PTR db-0.db.data.svc.cluster.local.",
    ),
    case(
        "6.2.244.10.in-addr.arpa",
        "PTR",
        answer="6.2.244.10.in-addr.arpa. 5 IN PTR 10-244-2-6.db.data.svc.cluster.local.",
    ),
    case("10.0.96.10.in-addr.arpa", "A", authority=SOA_V4),
    case("0.96.10.in-addr.arpa", "PTR", FORWARD),
    # --- ExternalName: the CNAME, for every type, not chased ---------------------------
    case(
        "ext.default.svc.cluster.local",
        "A",
        answer="ext.default.svc.cluster.local. 5 IN CNAME example.com.",
    ),
    case(
        "ext.default.svc.cluster.local",
        "AAAA",
        answer="ext.default.svc.cluster.local. 5 IN CNAME example.com.",
    ),
    case(
        "ext.default.svc.cluster.local",
        "CNAME",
        answer="ext.default.svc.cluster.local. 5 IN CNAME example.com.",
    ),
    case(
        "ext.default.svc.cluster.local",
        "TXT",
        answer="ext.default.svc.cluster.local. 5 IN CNAME example.com.",
    ),
    case("ext", "A", answer="ext. 5 IN CNAME example.com."),
    # --- ANY: one RRset is enough (RFC 8482) ------------------------------------------
    case(
        "web.default.svc.cluster.local",
        "ANY",
        answer="web.default.svc.cluster.local. 5 IN A 10.96.0.10",
    ),
    case("nope.default.svc.cluster.local", "ANY", "NXDOMAIN", authority=SOA),
]


def _lines(text: str) -> list[str]:
    records = []
    for line in text.strip().splitlines():
        if line.strip():
            records.extend(str(rr) for rr in dnslib.RR.fromZone(line.strip()))
    return sorted(" ".join(r.split()) for r in records)


def _section(records: list[dnslib.RR]) -> list[str]:
    return sorted(" ".join(str(rr).split()) for rr in records if rr.rtype != dnslib.QTYPE.OPT)


def make_query(
    qname: str,
    qtype: str = "A",
    *,
    qid: int = 4242,
    edns: int | None = None,
    dnssec_ok: bool = False,
    rd: bool = True,
    qclass: str = "IN",
) -> bytes:
    record = dnslib.DNSRecord(
        dnslib.DNSHeader(id=qid, rd=int(rd)),
        q=dnslib.DNSQuestion(qname, getattr(dnslib.QTYPE, qtype), getattr(dnslib.CLASS, qclass)),
    )
    if edns is not None:
        record.add_ar(dnslib.EDNS0(udp_len=edns, flags="do" if dnssec_ok else ""))
    return bytes(record.pack())


_TABLES: dict[str, DnsTable] = {}


def table_for(namespace: str) -> DnsTable:
    if namespace not in _TABLES:
        _TABLES[namespace] = build_dns_table(mesh_table(), namespace, "cluster.local", ttl=5)
    return _TABLES[namespace]


@pytest.mark.parametrize("c", CASES, ids=[f"{c.qname}/{c.qtype}@{c.namespace}" for c in CASES])
@pytest.mark.parametrize("edns", [None, 1232], ids=["plain", "edns"])
def test_answers(c: Case, edns: int | None) -> None:
    query = make_query(c.qname, c.qtype, edns=edns)
    result = answer(query, table_for(c.namespace), 1232)
    if c.rcode == FORWARD:
        assert isinstance(result, Forward), result
        assert result.question == query[12 : 12 + len(result.question)]
        assert result.edns_size == (edns or 0)
        return
    assert isinstance(result, bytes), result
    response = dnslib.DNSRecord.parse(result)
    assert response.header.id == 4242
    assert response.header.qr == 1 and response.header.aa == 1 and response.header.ra == 1
    assert response.header.tc == 0
    assert dnslib.RCODE[response.header.rcode] == c.rcode
    assert str(response.q.qname) == c.qname + "."
    assert (
        result[12 : 12 + len(query) - 12 - (11 if edns else 0)]
        == query[12 : len(query) - (11 if edns else 0)]
    )
    assert _section(response.rr) == _lines(c.answer)
    assert _section(response.auth) == _lines(c.authority)
    assert _section(response.ar) == _lines(c.additional)
    opts = [rr for rr in response.ar if rr.rtype == dnslib.QTYPE.OPT]
    assert len(opts) == (1 if edns else 0)


def test_question_is_echoed_exactly_as_asked() -> None:
    """0x20-randomising resolvers compare the case of the question and the owner names."""
    table = table_for("default")
    for qname in (
        "WeB.DeFaUlT.sVc.ClUsTeR.lOcAl",
        "WEB",
        "wEb.DeFault",
        "NoPe.DeFaUlT.svc.cluster.LOCAL",
    ):
        query = make_query(qname)
        result = answer(query, table, 1232)
        assert isinstance(result, bytes)
        assert result[12 : len(query)] == query[12:]
        response = dnslib.DNSRecord.parse(result)
        for rr in response.rr:
            assert str(rr.rname) == qname + "."


def test_header_bits() -> None:
    table = table_for("default")
    query = bytearray(make_query("web", rd=False))
    query[3] |= 0x10  # CD
    result = answer(bytes(query), table, 1232)
    assert isinstance(result, bytes)
    header = dnslib.DNSRecord.parse(result).header
    assert (header.rd, header.cd, header.aa, header.ra, header.qr) == (0, 1, 1, 1, 1)


def test_ttl_comes_from_the_flag() -> None:
    table = build_dns_table(mesh_table(), "default", "cluster.local", ttl=30)
    result = answer(make_query("web.default.svc.cluster.local"), table, 1232)
    assert isinstance(result, bytes)
    assert [rr.ttl for rr in dnslib.DNSRecord.parse(result).rr] == [30]
    result = answer(make_query("nope.default.svc.cluster.local"), table, 1232)
    assert isinstance(result, bytes)
    soa = dnslib.DNSRecord.parse(result).auth[0]
    assert soa.ttl == 30 and soa.rdata.times[-1] == 30


def test_other_domain_and_class() -> None:
    table = build_dns_table(mesh_table(), "default", "Example.Org.", ttl=5)
    # The table's names say cluster.local; the sidecar's domain decides NXDOMAIN.
    assert isinstance(answer(make_query("nope.example.org"), table, 1232), bytes)
    assert isinstance(answer(make_query("nope.cluster.local"), table, 1232), Forward)
    table = table_for("default")
    assert isinstance(answer(make_query("web", qclass="CH"), table, 1232), Forward)
    assert isinstance(
        answer(make_query("nope.default.svc.cluster.local", qclass="CH"), table, 1232), Forward
    )


# --- EDNS0 -----------------------------------------------------------------------------


def _opt(result: bytes) -> dnslib.RR:
    (opt,) = [rr for rr in dnslib.DNSRecord.parse(result).ar if rr.rtype == dnslib.QTYPE.OPT]
    return opt


def test_edns_opt_is_echoed_with_our_size_and_the_do_bit() -> None:
    table = table_for("default")
    for dnssec_ok in (False, True):
        result = answer(make_query("web", edns=4096, dnssec_ok=dnssec_ok), table, 1232)
        assert isinstance(result, bytes)
        opt = _opt(result)
        assert opt.rclass == 1232
        assert bool(opt.ttl & 0x8000) == dnssec_ok
        assert opt.ttl >> 16 == 0  # extended rcode and version 0


def test_edns_with_options_takes_the_general_path() -> None:
    """dig sends a cookie option; it is read properly (and not echoed: we keep no cookies)."""
    record = dnslib.DNSRecord.question("web.default.svc.cluster.local")
    record.add_ar(dnslib.EDNS0(udp_len=1232, opts=[dnslib.EDNSOption(10, b"\x01" * 8)]))
    result = answer(bytes(record.pack()), table_for("default"), 1232)
    assert isinstance(result, bytes)
    response = dnslib.DNSRecord.parse(result)
    assert _section(response.rr) == _lines("web.default.svc.cluster.local. 5 IN A 10.96.0.10")
    assert _opt(result).rdata == []


def test_unknown_edns_version_gets_badvers() -> None:
    record = dnslib.DNSRecord.question("web")
    record.add_ar(dnslib.EDNS0(udp_len=1232, version=1))
    result = answer(bytes(record.pack()), table_for("default"), 1232)
    assert isinstance(result, bytes)
    response = dnslib.DNSRecord.parse(result)
    assert response.header.rcode == 0 and not response.rr
    assert _opt(result).ttl >> 24 == 1  # extended rcode 1 << 4 | 0 = BADVERS (16)


# --- Sizes: UDP limits, TC, TCP ---------------------------------------------------------


def _big_table() -> DnsTable:
    table = NameTable()
    ips = [f"10.244.0.{i}" for i in range(1, 101)]
    table.table["big.default.svc.cluster.local"].CopyFrom(
        service(ips, [("http", 80, "tcp")], namespace="default", name="big", headless=True)
    )
    few = [f"10.244.1.{i}" for i in range(1, 6)]
    table.table["few.default.svc.cluster.local"].CopyFrom(
        service(few, [("http", 80, "tcp")], namespace="default", name="few", headless=True)
    )
    return build_dns_table(table, "default", "cluster.local")


@pytest.mark.parametrize(
    ("edns", "max_udp", "truncated"),
    [(None, 1232, True), (4096, 1232, True), (4096, 4096, False), (100, 4096, True)],
)
def test_too_big_for_udp_is_truncated_whole(
    edns: int | None, max_udp: int, truncated: bool
) -> None:
    # 100 A records: 12 + 35 + 100 * 16 = 1647 bytes.
    result = answer(make_query("big.default.svc.cluster.local", edns=edns), _big_table(), max_udp)
    assert isinstance(result, bytes)
    response = dnslib.DNSRecord.parse(result)
    assert response.header.tc == int(truncated)
    assert len(response.rr) == (0 if truncated else 100)  # never a partial RRset
    assert len(result) <= max(512, min(edns or 512, max_udp))


def test_tcp_carries_any_size() -> None:
    result = answer(make_query("big.default.svc.cluster.local"), _big_table(), None)
    assert isinstance(result, bytes)
    response = dnslib.DNSRecord.parse(result)
    assert response.header.tc == 0 and len(response.rr) == 100


def test_additional_records_are_dropped_before_truncating() -> None:
    # 5 SRV records fit in 512 bytes; with their 5 A records they do not.
    query = make_query("_http._tcp.few.default.svc.cluster.local", "SRV")
    result = answer(query, _big_table(), 1232)
    assert isinstance(result, bytes)
    response = dnslib.DNSRecord.parse(result)
    assert len(result) <= 512
    assert response.header.tc == 0
    assert len(response.rr) == 5 and not response.ar
    result = answer(query, _big_table(), None)
    assert isinstance(result, bytes)
    assert len(dnslib.DNSRecord.parse(result).ar) == 5


# --- Malformed queries ------------------------------------------------------------------


def _rcode(result: bytes | Forward | None) -> str:
    assert isinstance(result, bytes), result
    return str(dnslib.RCODE[result[3] & 0xF])


GOOD = make_query("web.default.svc.cluster.local", qid=0xBEEF)
# An OPT record without options: root, type 41, size 1232, version 0, no flags, rdlength 0.
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
HEADER = GOOD[:12]


def _with_counts(qd: int, an: int, ns: int, ar: int, rest: bytes) -> bytes:
    return HEADER[:4] + struct.pack("!HHHH", qd, an, ns, ar) + rest


MALFORMED = {
    "no question": (_with_counts(0, 0, 0, 0, b""), "FORMERR"),
    "two questions": (_with_counts(2, 0, 0, 0, GOOD[12:] * 2), "FORMERR"),
    "question cut short": (GOOD[:-3], "FORMERR"),
    "name cut short": (GOOD[:20], "FORMERR"),
    "question of 3 bytes": (HEADER + b"\x01a\x01", "FORMERR"),  # found by the fuzz test
    "question of 4 bytes": (HEADER + b"\x00\x00\x01\x00", "FORMERR"),
    "label longer than 63": (HEADER + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "FORMERR"),
    "pointer in the question": (HEADER + b"\xc0\x0c\x00\x01\x00\x01", "FORMERR"),
    "name longer than 255": (
        HEADER + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
        "FORMERR",
    ),
    "additional record cut short": (
        _with_counts(1, 0, 0, 1, GOOD[12:] + b"\x00\x00\x29"),
        "FORMERR",
    ),
    "two OPT records": (
        _with_counts(1, 0, 0, 2, GOOD[12:] + OPT * 2),
        "FORMERR",
    ),
    "OPT in the answer section": (
        _with_counts(1, 1, 0, 0, GOOD[12:] + OPT),
        "FORMERR",
    ),
    "OPT option overruns": (
        _with_counts(
            1, 0, 0, 1, GOOD[12:] + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x03\x00\x0a\x00"
        ),
        "FORMERR",
    ),
    "opcode STATUS": (HEADER[:2] + bytes([HEADER[2] | 0x10]) + GOOD[3:], "NOTIMP"),
    "opcode UPDATE": (HEADER[:2] + bytes([HEADER[2] | 0x28]) + GOOD[3:], "NOTIMP"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
@pytest.mark.parametrize("have_table", [True, False], ids=["table", "no-table"])
def test_malformed_queries_get_an_error_with_their_id(name: str, have_table: bool) -> None:
    query, rcode = MALFORMED[name]
    result = answer(query, table_for("default") if have_table else None, 1232)
    assert _rcode(result) == rcode
    assert isinstance(result, bytes)
    assert result[:2] == b"\xbe\xef"
    assert result[2] & 0x80  # QR
    assert result[2] & 0x78 == query[2] & 0x78  # opcode echoed
    dnslib.DNSRecord.parse(result)  # well formed itself


@pytest.mark.parametrize(
    "query",
    [b"", b"\x00", GOOD[:11], bytes([GOOD[0], GOOD[1], GOOD[2] | 0x80]) + GOOD[3:]],
    ids=["empty", "one byte", "no full header", "a response"],
)
def test_unanswerable_packets_are_dropped(query: bytes) -> None:
    assert answer(query, table_for("default"), 1232) is None
    assert answer(query, None, 1232) is None


def test_records_after_the_question_are_tolerated() -> None:
    """An answer-section record in a query (odd, but legal) does not stop the answer."""
    rr = b"\x01x\x07example\x00" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([1, 2, 3, 4])
    query = _with_counts(1, 1, 0, 0, GOOD[12:] + rr)
    result = answer(query, table_for("default"), 1232)
    assert _rcode(result) == "NOERROR"


def test_before_the_first_table_everything_is_forwarded() -> None:
    for qname, qtype in [
        ("web", "A"),
        ("web.default.svc.cluster.local", "A"),
        ("example.com", "AAAA"),
    ]:
        for edns in (None, 1232):
            query = make_query(qname, qtype, edns=edns, dnssec_ok=edns is not None)
            result = answer(query, None, 1232)
            assert isinstance(result, Forward)
            assert result.question == make_query(qname, qtype)[12:]
            assert result.edns_size == (edns or 0)
            assert result.dnssec_ok == (edns is not None)


# --- Building the table -----------------------------------------------------------------


def test_an_entry_that_cannot_be_honoured_is_named() -> None:
    table = mesh_table()
    table.table["bad.default.svc.cluster.local"].CopyFrom(service(["10.0.0.300"]))
    with pytest.raises(ValueError, match=r"bad\.default\.svc\.cluster\.local.*10\.0\.0\.300"):
        build_dns_table(table, "default", "cluster.local")
    table = mesh_table()
    table.table["x" * 64 + ".default.svc.cluster.local"].CopyFrom(service(["10.0.0.1"]))
    with pytest.raises(ValueError, match="longer than 63"):
        build_dns_table(table, "default", "cluster.local")


def test_short_name_collisions_follow_the_search_path() -> None:
    """`h.web` asked bare in `default`: the pod h of headless web in default (first search
    domain), not service h in namespace web."""
    table = NameTable()
    table.table["web.default.svc.cluster.local"].CopyFrom(
        service(["10.244.0.1"], namespace="default", name="web", headless=True)
    )
    table.table["h.web.default.svc.cluster.local"].CopyFrom(
        service(["10.244.0.1"], namespace="default", name="web")
    )
    table.table["h.web.svc.cluster.local"].CopyFrom(
        service(["10.96.0.99"], namespace="web", name="h")
    )
    built = build_dns_table(table, "default", "cluster.local")
    result = answer(make_query("h.web"), built, 1232)
    assert isinstance(result, bytes)
    assert _section(dnslib.DNSRecord.parse(result).rr) == _lines("h.web. 5 IN A 10.244.0.1")
    result = answer(make_query("h.web.svc"), built, 1232)
    assert isinstance(result, bytes)
    assert _section(dnslib.DNSRecord.parse(result).rr) == _lines("h.web.svc. 5 IN A 10.96.0.99")


def test_short_names_are_answered_by_the_fqdns_entry_not_stored() -> None:
    """One precomputed entry serves the FQDN and every short form (memory per service)."""
    table = table_for("default")
    a = b"\x00\x01\x00\x01"
    fqdn = table.answers[b"\x03web\x07default\x03svc\x07cluster\x05local\x00" + a]
    for short in (b"\x03web\x00", b"\x03web\x07default\x00", b"\x03web\x07default\x03svc\x00"):
        assert short + a not in table.answers
        assert lookup(table, short + a) is fqdn


def test_empty_table() -> None:
    table = build_dns_table(NameTable(), "default", "cluster.local")
    assert isinstance(answer(make_query("web"), table, 1232), Forward)
    assert _rcode(answer(make_query("web.default.svc.cluster.local"), table, 1232)) == "NXDOMAIN"
    assert _rcode(answer(make_query("cluster.local", "SOA"), table, 1232)) == "NOERROR"


def _by_namespace(table: NameTable) -> dict[str, NameTable]:
    out: dict[str, NameTable] = {}
    for fqdn, info in table.table.items():
        out.setdefault(info.namespace, NameTable()).table[fqdn].CopyFrom(info)
    return out


def _same_answers(one: DnsTable, other: DnsTable) -> None:
    assert one.answers.keys() == other.answers.keys()
    ptr = b"\xc0\x0c\x00\x0c"  # a PTR record owned by the question
    for key, entry in one.answers.items():
        theirs = other.answers[key]
        if key.endswith(b"\x04arpa\x00\x00\x0c\x00\x01"):
            # Records of one RRset in any order: compared as sets.
            assert sorted(entry.records.split(ptr)) == sorted(theirs.records.split(ptr)), key
            continue
        assert (entry.headers, entry.records, entry.cname) == (
            theirs.headers,
            theirs.records,
            theirs.cname,
        ), key
    assert one.ents == other.ents


def test_one_table_per_namespace_changed_alone_answers_as_the_whole_table() -> None:
    tables = _by_namespace(mesh_table())
    # One pod IP in two namespaces: its PTR names both, whichever table changes.
    shared = service(["10.244.1.5"], [("http", 80, "tcp")], namespace="prod", name="alias")
    tables["prod"].table["alias.prod.svc.cluster.local"].CopyFrom(shared)
    incremental = DnsTables("default", "cluster.local")
    first = incremental.update(tables)

    whole = NameTable()
    for table in tables.values():
        whole.MergeFrom(table)
    _same_answers(first, build_dns_table(whole, "default", "cluster.local"))

    # "data" loses its headless service and "prod" gains one; "default" is untouched.
    changed = dict(tables)
    del changed["data"]
    prod = NameTable()
    prod.CopyFrom(tables["prod"])
    prod.table["new.prod.svc.cluster.local"].CopyFrom(
        service(["10.96.3.3"], namespace="prod", name="new")
    )
    changed["prod"] = prod
    second = incremental.update(changed)
    whole = NameTable()
    for table in changed.values():
        whole.MergeFrom(table)
    _same_answers(second, build_dns_table(whole, "default", "cluster.local"))
    assert first.answers is not second.answers, "the table in use is never changed"
    assert incremental.update(changed) is second, "nothing changed, nothing built"
