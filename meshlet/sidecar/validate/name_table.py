"""NameTable -> itself, checked (pure): every name the DNS server will build from it fits DNS."""

from __future__ import annotations

from meshlet._proto.meshlet.v1.nametable_pb2 import NameInfo, NameTable
from meshlet.app_protocols import PortProtocol
from meshlet.sidecar.validate import fields
from meshlet.sidecar.validate.errors import Where
from meshlet.xds.error_detail import quoted as q

_SRV_PROTOCOLS = frozenset({"tcp", "udp", "sctp"})
_APP_PROTOCOLS = frozenset({"", *(p.value for p in PortProtocol if p.is_http)})
_MAX_NAME = 253  # characters of a DNS name without its trailing dot


def _entry(where: Where, fqdn: str, info: NameInfo) -> None:
    path = f'table["{fqdn}"]'  # a valid DNS name by now: short and printable
    for i, text in enumerate(info.ips):
        ip = fields.ip(where, f"{path}.ips[{i}]", text)
        # A headless service's pods get "<ip with dashes>.<fqdn>" names.
        if info.headless and len(ip) + 1 + len(fqdn) > _MAX_NAME:
            raise where.fail(f"{path}.ips[{i}] makes a pod name over {_MAX_NAME} characters")
    if info.cname:
        if info.ips:
            raise where.fail(f"{path} has both a cname and ips")
        if not fields.is_dns_name(info.cname):
            raise where.fail(f'{path}.cname "{q(info.cname)}" is not a valid DNS name')
    for i, port in enumerate(info.ports):
        fields.port(where, f"{path}.ports[{i}].port", port.port)
        if port.protocol not in _SRV_PROTOCOLS:
            raise where.fail(
                f'{path}.ports[{i}].protocol "{q(port.protocol)}" is not tcp, udp or sctp'
            )
        if port.app_protocol not in _APP_PROTOCOLS:
            raise where.fail(
                f'{path}.ports[{i}].app_protocol "{q(port.app_protocol)}" is not http, http2 '
                "or empty"
            )
        if not port.name:
            continue  # no SRV name
        if not fields.is_dns_label(port.name) or len(port.name) > 62:  # "_" makes 63
            raise where.fail(f'{path}.ports[{i}].name "{q(port.name)}" is not a DNS label')
        if len(port.name) + len(port.protocol) + len(fqdn) + 4 > _MAX_NAME:  # _n._p.fqdn
            raise where.fail(f"{path}.ports[{i}] makes an SRV name over {_MAX_NAME} characters")


def decode_name_table(name: str, table: NameTable, cluster_domain: str) -> NameTable:
    """Checks every entry; the table itself is what the DNS server reads."""
    where = Where("NameTable", name)
    domain = cluster_domain.rstrip(".").lower()
    suffix = "." + domain
    # Each namespace's names are its own table's: two tables never hold one name.
    if not fields.is_dns_label(name):
        raise where.fail("is not named by a namespace")
    own = f".{name}.svc{suffix}"
    for fqdn in sorted(table.table):
        if fqdn != fqdn.lower():
            raise where.fail(f"name {q(fqdn)} is not lower case")
        if not fields.is_dns_name(fqdn):
            raise where.fail(f'name "{q(fqdn)}" is not a valid DNS name')
        if not fqdn.endswith(suffix):
            raise where.fail(f"name {q(fqdn)} is outside the cluster domain {domain}")
        info = table.table[fqdn]
        if not fqdn.endswith(own) or info.namespace != name:
            raise where.fail(f"name {q(fqdn)} is not of namespace {name}")
        _entry(where, fqdn, info)
    return table
