"""Mutated real resources through the sidecar's validator: a state or a ValidationError, never
anything else; and a state the DNS server and the proxy's balancers can take.

The resources are what the control plane's translate makes for a small mesh of
every kind of service. Each case breaks one of them the way a hostile or buggy
peer might: bytes of its serialized form flipped, an enum set to a number the
enum does not name, an integer set to the extreme of its type, a sub-message
cleared, a string emptied or made long, a map key changed; inside packed Any
configs (tcp_proxy, load-balancing policies) too. Seeded, so a failure names the
case that reproduces it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from meshlet.model import Endpoint, Health, LbPolicy, Mesh, Service, ServiceKind, ServicePort
from meshlet.sidecar.dns.table import DnsTables
from meshlet.sidecar.proxy.router import Router
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.validate import Received, Update, ValidationError, apply_update
from meshlet.xds import types
from meshlet.xds.translate import Generated, translate
from meshlet.xds.wire import pack
from tests.xds_fixtures import DOMAIN, sidecar_state

CASES = 3000
SEED = 11


def mesh() -> Mesh:
    web = Service(
        "web",
        "default",
        cluster_ips=("10.96.0.10", "fd00::10"),
        ports=(
            ServicePort(
                "http",
                80,
                endpoints=(
                    Endpoint("10.1.0.1", 8080, zone="zone-a", hostname="web-0"),
                    Endpoint("10.1.0.2", 8080, Health.DRAINING, zone="zone-b", weight=3),
                ),
            ),
            ServicePort("dns", 53, "UDP"),
        ),
        lb_policy=LbPolicy.LEAST_REQUEST,
        prefer_same_zone=True,
    )
    api = Service(
        "api",
        "shop",
        cluster_ips=("10.96.0.20",),
        ports=(ServicePort("grpc", 9090, endpoints=(Endpoint("10.2.0.1", 9090),)),),
        lb_policy=LbPolicy.RING_HASH,
        client_ip_affinity=True,
    )
    db = Service(
        "db",
        "shop",
        kind=ServiceKind.HEADLESS,
        ports=(ServicePort("pg", 5432, endpoints=(Endpoint("10.3.0.1", 5432),)),),
        pod_addresses=(Endpoint("10.3.0.1", 0, hostname="db-0"), Endpoint("fd00::3", 0)),
    )
    search = Service(
        "search", "shop", kind=ServiceKind.EXTERNAL_NAME, external_name="search.example.com"
    )
    return Mesh((api, db, search, web))


def served() -> list[Generated]:
    return [g for g in translate(mesh(), DOMAIN) if not g.on_demand]


# --- mutations ------------------------------------------------------------------------

_INT_EXTREMES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), -1, 0, 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), -1, 0, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), -1, 0, 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 1, 65535, 65536, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), -1, 0, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), -1, 0, 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 0, 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_STRINGS = ("", "a" * 300, "A.B", "x\x00y", "é", "-", ".", "10.0.0.1", "fe80::1%eth0")
_FLOATS = (float("nan"), float("inf"), -float("inf"), -1.0, 1e300)

Mutation = Callable[[random.Random], None]


def _scalar_value(field: FieldDescriptor, rng: random.Random, current: object) -> object:
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return rng.choice((max(known) + 1, max(known) + rng.randint(2, 1000), -1, 2**31 - 1))
    if field.type in _INT_EXTREMES:
        return rng.choice(_INT_EXTREMES[field.type])
    if field.type == FieldDescriptor.TYPE_STRING:
        return rng.choice(_STRINGS)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return rng.choice((b"", b"\xff" * 8))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return not current
    return rng.choice(_FLOATS)


def _unpacked(packed: any_pb2.Any) -> Message | None:
    try:
        message_type = symbol_database.Default().GetSymbol(packed.type_url.rpartition("/")[2])
        inner: Message = message_type.FromString(packed.value)
    except (KeyError, DecodeError):
        return None
    return inner


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


# Each makes one change to one place; bound to that place when the sites are listed.


def _set_scalar(message: Message, field: FieldDescriptor) -> Mutation:
    def change(rng: random.Random) -> None:
        setattr(message, field.name, _scalar_value(field, rng, getattr(message, field.name)))

    return change


def _set_item(items: Any, index: int, field: FieldDescriptor) -> Mutation:
    def change(rng: random.Random) -> None:
        items[index] = _scalar_value(field, rng, items[index])

    return change


def _clear(message: Message, name: str) -> Mutation:
    return lambda _rng: message.ClearField(name)


def _rekey(entries: Any, key: object, field: FieldDescriptor) -> Mutation:
    key_field = field.message_type.fields_by_name["key"]
    holds_messages = field.message_type.fields_by_name["value"].message_type is not None

    def change(rng: random.Random) -> None:
        new = _scalar_value(key_field, rng, key)
        if new == key:
            return
        if holds_messages:
            entries[new].CopyFrom(entries[key])
        else:
            entries[new] = entries[key]
        del entries[key]

    return change


def _repacked(packed: any_pb2.Any, inner: Message, inner_change: Mutation) -> Mutation:
    def change(rng: random.Random) -> None:
        inner_change(rng)
        packed.value = inner.SerializeToString()

    return change


def _sites(message: Message, out: list[Mutation]) -> None:
    """Every change this case could make to `message`, its sub-messages and packed configs."""
    if isinstance(message, any_pb2.Any):
        inner = _unpacked(message)
        if inner is not None:
            inner_sites: list[Mutation] = []
            _sites(inner, inner_sites)
            out.extend(_repacked(message, inner, change) for change in inner_sites)
        return
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            for key in list(value):
                out.append(_rekey(value, key, field))
                if field.message_type.fields_by_name["value"].message_type is not None:
                    _sites(value[key], out)
        elif field.is_repeated:
            if field.message_type is not None:
                for item in value:
                    _sites(item, out)
            else:
                out.extend(_set_item(value, i, field) for i in range(len(value)))
            if len(value):
                out.append(_clear(message, field.name))
        elif field.message_type is not None:
            if message.HasField(field.name):
                out.append(_clear(message, field.name))
                _sites(value, out)
        else:
            out.append(_set_scalar(message, field))


def _flip_bytes(body: bytes, rng: random.Random) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if not data or kind < 0.15:
            data.extend(rng.randbytes(rng.randint(1, 8)))
        elif kind < 0.3:
            del data[rng.randrange(len(data)) :]
        else:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def mutated(message: Message, rng: random.Random) -> bytes:
    copy = type(message)()
    copy.CopyFrom(message)
    if rng.random() < 0.25:
        return _flip_bytes(copy.SerializeToString(), rng)
    for _ in range(rng.randint(1, 3)):
        sites: list[Mutation] = []
        _sites(copy, sites)
        # A value this field's Python type refuses is nothing a peer could send.
        with contextlib.suppress(TypeError, ValueError):
            rng.choice(sites)(rng)
    return copy.SerializeToString()


# --- the cases ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    index: int
    update: Update


def case(index: int, resources: list[Generated]) -> Case:
    rng = random.Random(SEED * 1_000_003 + index)
    target = rng.choice(resources)
    body = mutated(target.message, rng)
    bad = any_pb2.Any(type_url=target.type_url, value=body)
    same_type = [g for g in resources if g.type_url == target.type_url]
    if rng.random() < 0.5:  # delta: the mutated resource alone, named as it was
        update = Update(target.type_url, "2", [Received(target.name, "2", bad)])
    else:  # SotW: every resource of the type, the mutated one among them
        received = [Received(None, "2", bad if g is target else pack(g.message)) for g in same_type]
        update = Update(
            target.type_url, "2", received, full_state=target.type_url in types.FULL_STATE_TYPES
        )
    return Case(index, update)


def changed(before: SidecarState, after: SidecarState, cluster: str) -> bool:
    return before.clusters.get(cluster) is not after.clusters.get(cluster) or (
        before.endpoints.get(cluster) is not after.endpoints.get(cluster)
    )


def test_a_mutated_resource_is_a_state_or_a_validation_error() -> None:
    resources = served()
    state = sidecar_state(mesh())  # what a sidecar holds after taking them all
    outcomes = {"accepted": 0, "rejected": 0}
    for index in range(CASES):
        update = case(index, resources).update
        try:
            after = apply_update(state, update, DOMAIN)
        except ValidationError as exc:
            assert str(exc), f"case {index}: a NACK needs a message"
            assert len(str(exc).encode()) <= 4096, f"case {index}: NACK text unbounded"
            outcomes["rejected"] += 1
            continue
        except Exception as exc:  # what this test is for: anything else is a bug
            raise AssertionError(f"case {index} ({update.type_url}) raised {exc!r}") from exc
        assert isinstance(after, SidecarState)
        outcomes["accepted"] += 1
        # What the validator accepts, the data path can take.
        if after.name_tables is not state.name_tables:
            DnsTables("default", DOMAIN).update(after.name_tables)
        router = Router()
        router.update(after)
        for name, runtime in router.clusters.items():
            if changed(state, after, name):
                runtime.balancer().choose(index, (), 0.0, random.Random(index))
    # Both sides of the decision are exercised, or the mutations are too tame (or too wild).
    assert outcomes["accepted"] > CASES // 10 and outcomes["rejected"] > CASES // 10, outcomes
