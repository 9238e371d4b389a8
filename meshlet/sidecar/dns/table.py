"""NameTable -> every local DNS answer as wire bytes (pure), built once per table.

The hot path (`answer.py`) answers with one dict hit and a few byte copies;
everything it needs is computed here, when the control plane sends a new table.

`answers` maps a lower-cased question (name + type + class, wire format) to an
`Entry`: the records after the question and the header variants to put in
front of them. Every record's owner name is a compression pointer to the
question (c0 0c), so one entry serves however the client spelled the name (the
question is echoed as asked, for 0x20-randomising resolvers). Besides the
records that exist, the table holds NODATA entries for the other address family
of every name (AAAA of an IPv4-only service is asked as often as its A), so the
common questions all hit. The rest is the slow path's business, from what is
here: other types of a known name (NODATA, or the CNAME of an ExternalName for
every type), empty non-terminals (`ents`: NODATA, RFC 8020), unknown names
under the domain (NXDOMAIN with the SOA), pod names (`<dashed IP>.<ns>.pod.<domain>`,
the IP they spell, as CoreDNS's `pods insecure`), and short names.

Short names (`web`, `web.ns`, `web.ns.svc`) are not stored: the slow path
tries them the way a glibc search path in the sidecar's namespace would, in
its order - `<name>.<ns>.svc.<domain>`, then `<name>.svc.<domain>`, then (for
names ending in `.svc`) `<name>.<domain>` - and the first name that exists
answers. Storing them would triple the table for 10,000 services.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshlet._proto.meshlet.v1.nametable_pb2 import NameInfo, NameTable
from meshlet.sidecar.dns import wire

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_QR_AA_RA = 0x8000 | 0x0400 | 0x0080
_TC = 0x0200
_REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")


def type_class(rtype: int) -> bytes:
    """The 4 bytes after a question's name: type and class IN."""
    return rtype.to_bytes(2, "big") + b"\x00\x01"


class Entry:
    """One precomputed response shape: header variants and the records behind the question.

    `headers[i]` is the header without its ID for i = RD | CD << 1 | OPT << 2 (the
    query's RD and CD bits are copied; with an OPT record at the end ARCOUNT is one
    more). When the records do not fit the client's size, the additional section
    goes first (RFC 2181 9: no TC for that), then everything, with TC set.
    """

    __slots__ = (
        "ancount",
        "cname",
        "headers",
        "records",
        "smaller_headers",
        "smaller_size",
        "truncated",
    )

    def __init__(
        self,
        rcode: int,
        answers: Iterable[bytes] = (),
        authority: Iterable[bytes] = (),
        additional: Iterable[bytes] = (),
        *,
        cname: bool = False,
    ) -> None:
        an, ns, ad = list(answers), list(authority), list(additional)
        body = b"".join(an + ns)
        self.records = body + b"".join(ad)
        self.headers = _headers(rcode, len(an), len(ns), len(ad), False)
        # Without the additional records: the first `smaller_size` bytes of `records`.
        self.smaller_headers = _headers(rcode, len(an), len(ns), 0, False)
        self.smaller_size = len(body)
        self.truncated = _headers(rcode, 0, 0, 0, True)
        self.cname = cname  # an ExternalName's CNAME: the answer to every type
        self.ancount = len(an)


@functools.cache
def _headers(rcode: int, an: int, ns: int, ar: int, tc: bool) -> tuple[bytes, ...]:
    """The 8 header variants of one response shape, shared by every entry of that shape."""
    variants = []
    for index in range(8):
        rd, cd, edns = index & 1, index >> 1 & 1, index >> 2 & 1
        flags = _QR_AA_RA | (_TC if tc else 0) | rd << 8 | cd << 4 | rcode
        variants.append(wire.header_tail(flags, 1, an, ns, ar + edns))
    return tuple(variants)


_generations = itertools.count(1)


@dataclass(frozen=True, slots=True, eq=False)
class DnsTable:
    """Every local answer of one NameTable; immutable once built (swap it whole)."""

    answers: dict[bytes, Entry]
    ents: frozenset[bytes]  # empty non-terminals (and the apex) under the domain
    domain: bytes  # the cluster domain, wire format, lower case
    # Short-name expansions: "<ns>.svc.<domain>" and "svc.<domain>" in wire format.
    namespace_suffix: bytes
    svc_suffix: bytes
    nxdomain: Entry
    nodata: Entry  # with the domain's SOA
    nodata_reverse: tuple[tuple[bytes, Entry], ...]  # (zone, NODATA with its SOA)
    nodata_short: Entry  # short names are in no zone of ours: no SOA
    ttl: int
    # "pod.<domain>" in wire format: pod names (<dashed IP>.<ns>.pod.<domain>) answer
    # with the IP they spell, as CoreDNS's `pods insecure` does.
    pod_suffix: bytes = b""
    # Unique per table built in this process: what answers made from it are tied to,
    # without holding the table itself (dns/replay.py).
    generation: int = field(default_factory=_generations.__next__)

    def __repr__(self) -> str:
        return f"DnsTable({len(self.answers)} answers, {len(self.ents)} ENTs, ttl={self.ttl})"


def _ip(text: str, where: str) -> IP:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an IP address") from None


def _name(text: str, where: str) -> bytes:
    try:
        return wire.encode_name(text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _address_record(owner: bytes, ip: IP, ttl: int) -> bytes:
    rtype, rdata = wire.address_rdata(ip)
    return wire.rr(owner, rtype, ttl, rdata)


def _dashed(ip: IP) -> str:
    """The CoreDNS endpoint name of a pod without a hostname: 10-0-0-1, fd00--1."""
    return str(ip).replace(".", "-").replace(":", "-")


def _pod_hostnames(table: NameTable, fqdns: list[str]) -> dict[str, dict[IP, bytes]]:
    """Headless service fqdn -> pod IP -> the pod's own name (`<hostname>.<service fqdn>`)."""
    hostnames: dict[str, dict[IP, bytes]] = {}
    for fqdn in fqdns:
        parent = fqdn.partition(".")[2]
        info = table.table[fqdn]
        if parent in table.table and table.table[parent].headless and not info.headless:
            if info.cname:
                continue
            pods = hostnames.setdefault(parent, {})
            for text in info.ips:
                pods.setdefault(_ip(text, fqdn), _name(fqdn.lower(), fqdn))
    return hostnames


class _Zone:
    """What every part of one table shares: the domain, its SOA and the NODATA shapes."""

    def __init__(self, domain: str, ttl: int, serial: int) -> None:
        self.ttl = ttl
        self.domain = _name(domain, "cluster domain")
        mname = wire.encode_name(f"ns.dns.{domain}")
        rname = wire.encode_name(f"hostmaster.{domain}")
        soa_rdata = wire.soa_rdata(mname, rname, serial, ttl)
        self.soa = wire.rr(self.domain, wire.TYPE_SOA, ttl, soa_rdata)
        self.apex = Entry(
            wire.NOERROR, [wire.rr(wire.POINTER_TO_QUESTION, wire.TYPE_SOA, ttl, soa_rdata)]
        )
        self.nodata = Entry(wire.NOERROR, authority=[self.soa])
        self.nodata_reverse = tuple(
            (zone, Entry(wire.NOERROR, authority=[wire.rr(zone, wire.TYPE_SOA, ttl, soa_rdata)]))
            for zone in (wire.encode_name(z) for z in _REVERSE_ZONES)
        )
        self.nodata_short = Entry(wire.NOERROR)
        self.nxdomain = Entry(wire.NXDOMAIN, authority=[self.soa])


@dataclass(frozen=True, slots=True)
class _Part:
    """The answers of one NameTable, before they join the others'."""

    answers: dict[bytes, Entry]  # every one but the PTRs
    pointers: dict[bytes, list[bytes]]  # reverse name -> PTR targets
    ents: frozenset[bytes]


class _Builder:
    """Turns entries into answers as it goes: no per-name staging (the peak memory of a
    build of 10,000 services stays near the size of the result)."""

    def __init__(self, zone: _Zone) -> None:
        self.ttl = zone.ttl
        self.domain = zone.domain
        self.answers: dict[bytes, Entry] = {}
        self.ents: set[bytes] = {self.domain}
        self.pointers: dict[bytes, list[bytes]] = {}  # reverse name -> PTR targets
        self.nodata = zone.nodata
        self.nodata_reverse = zone.nodata_reverse
        self.nodata_short = zone.nodata_short

    def _nodata_of(self, name: bytes) -> Entry:
        if wire.is_subdomain(name, self.domain):
            return self.nodata
        for zone, entry in self.nodata_reverse:
            if wire.is_subdomain(name, zone):
                return entry
        return self.nodata_short

    def _exists(self, name: bytes) -> None:
        """Every ancestor of `name` up to the domain exists (an empty non-terminal)."""
        if wire.is_subdomain(name, self.domain):
            while name != self.domain:
                name = name[name[0] + 1 :]
                self.ents.add(name)

    def add(self, raw: str, info: NameInfo, hostnames: dict[str, dict[IP, bytes]]) -> None:
        fqdn = raw.strip(".").lower()
        name = _name(fqdn, "name table entry")
        self._exists(name)
        ttl, answers = self.ttl, self.answers
        if info.cname:
            target = _name(info.cname, fqdn)
            record = wire.rr(wire.POINTER_TO_QUESTION, wire.TYPE_CNAME, ttl, target)
            entry = Entry(wire.NOERROR, [record], cname=True)
            for rtype in (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_CNAME):
                answers[name + type_class(rtype)] = entry
            self._srv(fqdn, info, [(target, [])])
            return
        ips = list(dict.fromkeys(_ip(text, fqdn) for text in info.ips))
        self._addresses(name, ips)
        if raw.partition(".")[2] in hostnames:
            return  # a pod's hostname entry: its PTR and SRV come with its service
        targets: list[tuple[bytes, list[IP]]] = []
        if info.headless:
            pods = hostnames.get(raw, {})
            for ip in ips:
                pod = pods.get(ip)
                if pod is None:
                    pod = _name(f"{_dashed(ip)}.{fqdn}", fqdn)
                    self._exists(pod)
                    self._addresses(pod, [ip])
                targets.append((pod, [ip]))
                self.pointers.setdefault(wire.encode_name(wire.reverse_name(ip)), []).append(pod)
        else:
            for ip in ips:
                self.pointers.setdefault(wire.encode_name(wire.reverse_name(ip)), []).append(name)
            targets.append((name, ips))
        self._srv(fqdn, info, targets)

    def _addresses(self, name: bytes, ips: list[IP]) -> None:
        """A and AAAA: the records, or NODATA for a family without addresses (on the fast path)."""
        for rtype in (wire.TYPE_A, wire.TYPE_AAAA):
            rrs = [
                wire.rr(wire.POINTER_TO_QUESTION, rtype, self.ttl, ip.packed)
                for ip in ips
                if (ip.version == 4) == (rtype == wire.TYPE_A)
            ]
            self.answers[name + type_class(rtype)] = (
                Entry(wire.NOERROR, rrs) if rrs else self._nodata_of(name)
            )

    def _srv(self, fqdn: str, info: NameInfo, targets: list[tuple[bytes, list[IP]]]) -> None:
        """SRV for every named port: one record per target, the targets' addresses as glue."""
        weight = 100 // len(targets) if targets else 0  # as CoreDNS weighs them
        ttl = self.ttl
        for port in info.ports:
            if not port.name or not port.protocol:
                continue  # an SRV name needs the port's name
            srv = _name(f"_{port.name}._{port.protocol}.{fqdn}", f"SRV name of {fqdn}")
            self._exists(srv)
            rrs = [
                wire.rr(
                    wire.POINTER_TO_QUESTION,
                    wire.TYPE_SRV,
                    ttl,
                    wire.srv_rdata(0, weight, port.port, target),
                )
                for target, _ in targets
            ]
            glue = [_address_record(target, ip, ttl) for target, ips in targets for ip in ips]
            key = srv + type_class(wire.TYPE_SRV)
            self.answers[key] = Entry(wire.NOERROR, rrs, (), glue) if rrs else self.nodata

    def part(self) -> _Part:
        answers = self.answers
        existence = [
            type_class(t) for t in (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_SRV, wire.TYPE_CNAME)
        ]
        ents = frozenset(
            name for name in self.ents if not any(name + suffix in answers for suffix in existence)
        )
        return _Part(answers, self.pointers, ents)


def _part(zone: _Zone, name_table: NameTable) -> _Part:
    builder = _Builder(zone)
    fqdns = sorted(name_table.table)
    hostnames = _pod_hostnames(name_table, fqdns)
    for fqdn in fqdns:
        builder.add(fqdn, name_table.table[fqdn], hostnames)
    return builder.part()


class DnsTables:
    """The DnsTable of many NameTables (one per namespace), rebuilt a table at a time.

    Each table's answers are built alone (a namespace's names are its own); what
    they share is joined: PTRs (one pod IP may be in several namespaces) and the
    empty non-terminals. A change of one table builds that table again, and
    copies the references of the others' answers into the new DnsTable.

    Raises ValueError, naming the entry, when an entry holds something that is
    not an IP address or not a DNS name; nothing is kept of that update.
    """

    def __init__(self, namespace: str, domain: str, ttl: int = 5, serial: int = 1) -> None:
        self._domain = domain.strip(".").lower()
        self._namespace = namespace.lower()
        self._zone = _Zone(self._domain, ttl, serial)
        self._sources: dict[str, NameTable] = {}
        self._parts: dict[str, _Part] = {}
        self._answers: dict[bytes, Entry] = {}  # every part's, PTRs too
        # Reverse name -> table -> PTR targets.
        self._pointers: dict[bytes, dict[str, list[bytes]]] = {}
        self.table: DnsTable | None = None

    def update(self, tables: Mapping[str, NameTable]) -> DnsTable:
        changed = {
            name: tables.get(name)
            for name in tables.keys() | self._sources.keys()
            if tables.get(name) is not self._sources.get(name)
        }
        if self.table is not None and not changed:
            return self.table
        built = {n: _part(self._zone, t) for n, t in changed.items() if t is not None}
        # Nothing is changed before here: a table that fails leaves the last one as it was.
        answers = dict(self._answers)
        touched: set[bytes] = set()
        for name in changed:
            old = self._parts.pop(name, None)
            if old is not None:
                for key in old.answers:
                    answers.pop(key, None)
                for reverse in old.pointers:
                    self._pointers[reverse].pop(name, None)
                touched |= old.pointers.keys()
            new = built.get(name)
            if new is not None:
                self._parts[name] = new
                answers.update(new.answers)
                for reverse, targets in new.pointers.items():
                    self._pointers.setdefault(reverse, {})[name] = targets
                touched |= new.pointers.keys()
            if name in tables:
                self._sources[name] = tables[name]
            else:
                self._sources.pop(name, None)
        ptr = type_class(wire.TYPE_PTR)
        ttl = self._zone.ttl
        for reverse in touched:
            by_table = self._pointers.get(reverse, {})
            targets = [t for name in sorted(by_table) for t in by_table[name]]
            if not targets:
                self._pointers.pop(reverse, None)
                answers.pop(reverse + ptr, None)
                continue
            rrs = [
                wire.rr(wire.POINTER_TO_QUESTION, wire.TYPE_PTR, ttl, t)
                for t in dict.fromkeys(targets)
            ]
            answers[reverse + ptr] = Entry(wire.NOERROR, rrs)
        zone = self._zone
        answers[zone.domain + type_class(wire.TYPE_SOA)] = zone.apex
        self._answers = answers
        ents = frozenset().union(*(part.ents for part in self._parts.values()))
        self.table = DnsTable(
            answers=answers,
            ents=ents | {zone.domain},
            domain=zone.domain,
            namespace_suffix=_name(f"{self._namespace}.svc.{self._domain}", "namespace"),
            svc_suffix=wire.encode_name(f"svc.{self._domain}"),
            nxdomain=zone.nxdomain,
            nodata=zone.nodata,
            nodata_reverse=zone.nodata_reverse,
            nodata_short=zone.nodata_short,
            ttl=ttl,
            pod_suffix=b"\x03pod" + zone.domain,
        )
        return self.table


def build_dns_table(
    name_table: NameTable, namespace: str, domain: str, ttl: int = 5, serial: int = 1
) -> DnsTable:
    """Precompute every answer of one `name_table` for a sidecar in `namespace`.

    Raises ValueError, naming the entry, when an entry holds something that is not
    an IP address or not a DNS name: the xDS client can NACK the table with it.
    """
    return DnsTables(namespace, domain, ttl, serial).update({"": name_table})
