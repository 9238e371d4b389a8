"""Protobuf wire helpers: pack into Any, and build xDS responses from pre-serialized bytes.

Each resource is serialized once; a response is the concatenation of the
resources' encoded fields plus a few small per-stream fields, so fanning a push
out to many streams copies bytes and serializes nothing again.
"""

from __future__ import annotations

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

# Field numbers from envoy/service/discovery/v3/discovery.proto.
_ANY_TYPE_URL, _ANY_VALUE = 1, 2
_RESOURCE_VERSION, _RESOURCE_BODY, _RESOURCE_NAME = 1, 2, 3
_SOTW_VERSION, _SOTW_RESOURCES, _SOTW_TYPE_URL, _SOTW_NONCE = 1, 2, 4, 5
_DELTA_SYSTEM_VERSION, _DELTA_RESOURCES, _DELTA_TYPE_URL, _DELTA_NONCE = 1, 2, 4, 5
_DELTA_REMOVED = 6


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes and messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_any(type_url: str, value: bytes) -> bytes:
    return field(_ANY_TYPE_URL, type_url.encode()) + field(_ANY_VALUE, value)


def sotw_resource_field(any_bytes: bytes) -> bytes:
    """DiscoveryResponse.resources entry."""
    return field(_SOTW_RESOURCES, any_bytes)


def delta_resource_field(name: str, version: str, any_bytes: bytes) -> bytes:
    """DeltaDiscoveryResponse.resources entry: a discovery.v3.Resource."""
    resource = (
        field(_RESOURCE_NAME, name.encode())
        + field(_RESOURCE_VERSION, version.encode())
        + field(_RESOURCE_BODY, any_bytes)
    )
    return field(_DELTA_RESOURCES, resource)


def sotw_response(version: str, type_url: str, nonce: str, resource_fields: list[bytes]) -> bytes:
    return b"".join(
        [
            field(_SOTW_VERSION, version.encode()),
            *resource_fields,
            field(_SOTW_TYPE_URL, type_url.encode()),
            field(_SOTW_NONCE, nonce.encode()),
        ]
    )


def delta_response(
    system_version: str,
    type_url: str,
    nonce: str,
    resource_fields: list[bytes],
    removed: list[str],
) -> bytes:
    return b"".join(
        [
            field(_DELTA_SYSTEM_VERSION, system_version.encode()),
            *resource_fields,
            field(_DELTA_TYPE_URL, type_url.encode()),
            field(_DELTA_NONCE, nonce.encode()),
            *(field(_DELTA_REMOVED, name.encode()) for name in removed),
        ]
    )
