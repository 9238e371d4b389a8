"""The sidecar's last accepted config as a file, and back (pure).

A sidecar restarted while the control plane is unreachable serves from this file
at once, instead of forwarding every name upstream until the control plane is
back. The file holds what the xDS client accepted, exactly as it came off the
wire (each resource's name, version and bytes, and each type's version), so a
restored state is rebuilt by the same validator as a fresh one, and a resumed
delta stream names the versions it holds (`initial_resource_versions`).

Format: one JSON object, `{"format": FORMAT, "cluster_domain": ..., "types": [...]}`.
Resource bytes are base64. A file of another format, another cluster domain, cut
short, or whose resources the validator refuses is not used: `decode` raises
SavedStateError and the caller starts empty.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2

from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.validate import Received, Update, ValidationError, apply_update
from meshlet.xds import types

FORMAT = "meshlet.sidecar.saved-state/v1"
FILE_NAME = "xds-state.json"


class SavedStateError(ValueError):
    """A saved state that cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class Saved:
    state: SidecarState
    written_at: float | None  # wall clock, as the writer said


def _empty_assignments(state: SidecarState) -> list[str]:
    """EDS clusters the control plane said have no load assignment (held as no endpoints)."""
    held = state.accepted.get(types.ENDPOINT, {})
    return sorted(name for name in state.endpoints if name not in held)


def encode(state: SidecarState, cluster_domain: str, written_at: float) -> bytes:
    """The file's bytes for `state`."""
    by_type = []
    for type_url in types.PUSH_ORDER:
        held = state.accepted.get(type_url)
        if type_url not in state.type_versions and not held:
            continue
        entry: dict[str, Any] = {
            "type_url": type_url,
            "version": state.type_versions.get(type_url, ""),
            "resources": [
                [r.name, r.version, base64.b64encode(r.body).decode("ascii")]
                for r in (held or {}).values()
            ],
        }
        if type_url == types.ENDPOINT:
            entry["empty"] = _empty_assignments(state)
        by_type.append(entry)
    document = {
        "format": FORMAT,
        "cluster_domain": cluster_domain,
        "written_at": written_at,
        "types": by_type,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _updates(document: dict[str, Any]) -> Iterator[Update]:
    entries = document.get("types")
    if not isinstance(entries, list):
        raise SavedStateError("it has no list of types")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("type_url"), str):
            raise SavedStateError("a type entry has no type_url")
        type_url = entry["type_url"]
        resources = entry.get("resources", [])
        if not isinstance(resources, list):
            raise SavedStateError(f"the {types.short_name(type_url)} resources are not a list")
        received = []
        for item in resources:
            if not (isinstance(item, list) and len(item) == 3):
                raise SavedStateError(f"a {types.short_name(type_url)} resource is malformed")
            if not all(isinstance(x, str) for x in item):
                raise SavedStateError(f"a {types.short_name(type_url)} resource is malformed")
            name, version, body = item
            try:
                value = base64.b64decode(body, validate=True)
            except binascii.Error:
                raise SavedStateError(f"resource {name} is not base64") from None
            received.append(Received(name, version, any_pb2.Any(type_url=type_url, value=value)))
        removed = entry.get("empty", [])
        if not (isinstance(removed, list) and all(isinstance(x, str) for x in removed)):
            raise SavedStateError("the list of clusters without endpoints is malformed")
        yield Update(type_url, str(entry.get("version", "")), received, removed)


def decode(data: bytes, cluster_domain: str) -> Saved:
    """The state saved in `data`, rebuilt through the validator; SavedStateError if unusable."""
    try:
        document = json.loads(data)
    except json.JSONDecodeError as exc:
        raise SavedStateError(f"it is not whole JSON ({exc.msg} at byte {exc.pos})") from None
    except UnicodeDecodeError:
        raise SavedStateError("it is not UTF-8 text") from None
    except RecursionError:
        raise SavedStateError("it is nested too deep to be one of ours") from None
    if not isinstance(document, dict):
        raise SavedStateError("it is not a JSON object")
    if document.get("format") != FORMAT:
        raise SavedStateError(f"its format is {document.get('format')!r}, not {FORMAT!r}")
    domain = document.get("cluster_domain")
    if domain != cluster_domain:
        raise SavedStateError(f"it is for cluster domain {domain!r}, not {cluster_domain!r}")
    state = SidecarState()
    for update in _updates(document):
        if update.type_url not in types.PUSH_ORDER:
            raise SavedStateError(
                f"it holds type {update.type_url}, which the sidecar does not use"
            )
        try:
            state = apply_update(state, update, cluster_domain)
        except ValidationError as exc:
            raise SavedStateError(f"the validator refuses it: {exc}") from None
    when = document.get("written_at")
    return Saved(state, float(when) if isinstance(when, (int, float)) else None)
