"""`meshlet proxy-status`'s table, from the control plane's /debug/versions and
/debug/clients (pure: JSON in, text out).

Per stream and resource type: SYNCED when the client ACKed the latest response and
holds what the control plane serves now; STALE when a response is not answered yet,
or the control plane has a newer version it has not sent; NACKED when the client's
last answer was a NACK; NOT SENT before the first response; "-" when the client
never asked for the type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshlet.commands.tables import render

# The columns, in the order `istioctl proxy-status` shows them.
TYPES = ("cds", "lds", "eds", "rds", "nds")
VERSION_CHARS = 8

SYNCED, STALE, NACKED, NOT_SENT, NOT_ASKED = "SYNCED", "STALE", "NACKED", "NOT SENT", "-"


def sync_state(
    watch: Mapping[str, Any] | None,
    served_version: str | None,
    caught_up: bool,
) -> str:
    """One type of one stream. `served_version`: the control plane's version of the type
    now; `caught_up`: the stream has computed every push of the current snapshot."""
    if watch is None:
        return NOT_ASKED
    if not watch.get("nonce_sent"):
        return NOT_SENT
    if watch.get("last_answer") == "nack":
        return NACKED
    if watch.get("nonce_answered") != watch.get("nonce_sent"):
        return STALE  # sent, not answered yet
    if watch.get("wildcard"):
        # It holds the whole type, so its version is the type's.
        behind = served_version is not None and watch.get("version_acked") != served_version
        if behind and not caught_up:
            return STALE  # ACKed an older version; the newer one is not sent yet
    elif watch.get("names_behind", 0) > 0:
        # Its version is the type's too, which moves with resources it did not ask
        # for: the control plane compares the names it asked for instead.
        return STALE
    return SYNCED


def stream_states(client: Mapping[str, Any], versions: Mapping[str, Any]) -> dict[str, str]:
    """Each type's state for one stream of /debug/clients."""
    served = versions.get("types", {})
    caught_up = client.get("generation", 0) >= versions.get("generation", 0)
    watches = client.get("types", {})
    return {t: sync_state(watches.get(t), served.get(t), caught_up) for t in TYPES}


def _cell(state: str, watch: Mapping[str, Any] | None) -> str:
    version = str((watch or {}).get("version_acked", ""))[:VERSION_CHARS]
    return f"{state} ({version})" if version else state


def status_rows(
    clients: Sequence[Mapping[str, Any]], versions: Mapping[str, Any]
) -> list[list[str]]:
    rows = []
    for client in clients:
        states = stream_states(client, versions)
        watches = client.get("types", {})
        rows.append(
            [
                str(client.get("node") or "(no node id)"),
                str(client.get("cluster") or "-"),
                str(client.get("protocol", "")),
                *(_cell(states[t], watches.get(t)) for t in TYPES),
            ]
        )
    return sorted(rows)


def nack_lines(clients: Sequence[Mapping[str, Any]]) -> list[str]:
    """A line for each type whose last answer was a NACK, with what the client said."""
    lines = []
    for client in clients:
        for type_name, watch in sorted(client.get("types", {}).items()):
            if watch.get("last_answer") == "nack":
                node = client.get("node") or "(no node id)"
                version = watch.get("version_nacked", "")
                lines.append(
                    f"NACK from {node} for {type_name.upper()} version {version}: "
                    f"{watch.get('last_nack', '')}"
                )
    return sorted(lines)


def served_line(versions: Mapping[str, Any]) -> str:
    """What the control plane serves now: its snapshot generation and each type's version."""
    served = versions.get("types", {})
    shown = ", ".join(f"{t.upper()} {str(served.get(t, '-'))[:VERSION_CHARS]}" for t in TYPES)
    return f"control plane: generation {versions.get('generation', 0)}, serving {shown}"


def status_table(clients: Sequence[Mapping[str, Any]], versions: Mapping[str, Any]) -> str:
    header = ["NODE", "CLUSTER", "PROTOCOL", *(t.upper() for t in TYPES)]
    lines = [served_line(versions), ""]
    lines.append(render(header, status_rows(clients, versions)) if clients else "no clients")
    nacks = nack_lines(clients)
    if nacks:
        lines += ["", *nacks]
    return "\n".join(lines)


def status_json(
    clients: Sequence[Mapping[str, Any]], versions: Mapping[str, Any]
) -> dict[str, object]:
    """The raw pages, and each stream's states as the table shows them."""
    return {
        "versions": versions,
        "clients": list(clients),
        "status": [
            {"node": c.get("node", ""), "protocol": c.get("protocol", "")}
            | stream_states(c, versions)
            for c in clients
        ],
    }
