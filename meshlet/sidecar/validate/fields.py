"""Checks of the field types every decoder reads: each bad value a ValidationError, never
another exception. Values a message quotes are shortened (`q`): the peer chose them."""

from __future__ import annotations

import ipaddress
import re
from typing import TypeVar

from envoy.config.core.v3 import address_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import DecodeError, Message

from meshlet.sidecar.validate.errors import Where
from meshlet.xds.error_detail import quoted as q

M = TypeVar("M", bound=Message)

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
# google.protobuf.Duration's own range: about 10,000 years either way.
_MAX_DURATION_SECONDS = 315_576_000_000
_MAX_NANOS = 999_999_999


def is_dns_name(name: str) -> bool:
    """Lower-case labels of letters, digits and inner hyphens, without a trailing dot."""
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def is_dns_label(text: str) -> bool:
    """One label of a DNS name, as Kubernetes names its objects."""
    return bool(_LABEL.match(text))


def ip(where: Where, path: str, text: str) -> str:
    """`text` as an IP address in its canonical form."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise where.fail(f'{path} "{q(text)}" is not an IP address') from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise where.fail(f'{path} "{q(text)}" has a scope, which no mesh address has')
    return str(address)


def port(where: Where, path: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise where.fail(f"{path} {value} is out of range 1-65535")
    return value


def socket_address(where: Where, path: str, address: address_pb2.Address) -> tuple[str, int]:
    if address.WhichOneof("address") != "socket_address":
        raise where.fail(f"{path} is not a socket address")
    socket = address.socket_address
    if socket.WhichOneof("port_specifier") == "named_port":
        raise where.fail(f"{path}.socket_address.named_port is not supported")
    return (
        ip(where, f"{path}.socket_address.address", socket.address),
        port(where, f"{path}.socket_address.port_value", socket.port_value),
    )


def seconds(where: Where, path: str, duration: duration_pb2.Duration) -> float:
    """A Duration in seconds, if it is one: in range, and seconds and nanos of one sign."""
    s, n = duration.seconds, duration.nanos
    if abs(s) > _MAX_DURATION_SECONDS or abs(n) > _MAX_NANOS or (s > 0 > n) or (s < 0 < n):
        raise where.fail(f"{path} ({s}s, {n}ns) is not a valid duration")
    return s + n / 1e9


def positive_seconds(where: Where, path: str, duration: duration_pb2.Duration) -> float:
    value = seconds(where, path, duration)
    if value <= 0:
        raise where.fail(f"{path} must be positive (got {value:g}s)")
    return value


# Items a message names before it says how many more there were.
LISTED = 5


def listing(shown: list[str], total: int, empty: str) -> str:
    """`shown` (the first LISTED of `total`) joined, with how many more; `empty` for none."""
    more = total - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "") or empty


def enum_name(where: Where, path: str, enum: EnumTypeWrapper, value: int) -> str:
    """The name of `value` in `enum`: a number the enum does not name is an error."""
    try:
        return enum.Name(value)
    except ValueError:
        raise where.fail(f"{path} {value} is not a value of {enum.DESCRIPTOR.name}") from None


def decode(where: Where, path: str, packed: any_pb2.Any, message_type: type[M]) -> M:
    try:
        return message_type.FromString(packed.value)
    except DecodeError as exc:
        raise where.fail(f"{path} cannot be decoded ({q(str(exc))})") from None


def type_url(message: type[Message]) -> str:
    """The URL an Any of this message type carries."""
    return "type.googleapis.com/" + message.DESCRIPTOR.full_name


def type_name(packed: any_pb2.Any) -> str:
    """What a message may call an Any's type: the last part of its URL, shortened."""
    return q(packed.type_url.rpartition("/")[2]) or "nothing"


def refuse_set(where: Where, path: str, message: Message, names: tuple[str, ...]) -> None:
    """Fails on the first field of `names` that `message` sets: one meshlet cannot honour."""
    for name in names:
        try:
            present = message.HasField(name)
        except ValueError:  # a repeated or plain scalar field: set when not empty
            present = bool(getattr(message, name))
        if present:
            raise where.fail(f"{path}.{name} is not supported")
