"""What `meshlet demo` shows: the load generator's reports as text (pure).

A report is the JSON line meshlet.devmesh.load prints: per target the requests
that succeeded and failed so far, by answering backend, and the addresses its
name resolved to. `Rates` turns two successive reports into requests per
second; `render` draws one screen; `summary` the closing table.

`SidecarRecord` keeps what the client pod's sidecar did (its connects retried,
its endpoints ejected), from its /clusters pages read one after another;
`header_lines` and `next_steps` say where to look, with meshlet commands that exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Report = Mapping[str, Any]


@dataclass
class Rates:
    """Requests per second per target and per endpoint, from the last two reports."""

    previous: Report | None = None
    per_second: dict[str, float] = field(default_factory=dict)
    per_endpoint: dict[tuple[str, str], float] = field(default_factory=dict)

    def update(self, report: Report) -> None:
        if self.previous is not None:
            seconds = float(report["elapsed"]) - float(self.previous["elapsed"])
            if seconds > 0:
                for name, target in report["targets"].items():
                    before = self.previous["targets"].get(name, {})
                    done = target["ok"] + target["errors"]
                    done_before = before.get("ok", 0) + before.get("errors", 0)
                    self.per_second[name] = (done - done_before) / seconds
                    earlier = before.get("endpoints", {})
                    for endpoint, count in target["endpoints"].items():
                        moved = count - earlier.get(endpoint, 0)
                        self.per_endpoint[(name, endpoint)] = moved / seconds
        self.previous = report


def _bar(share: float, width: int = 20) -> str:
    filled = round(share * width)
    return "#" * filled + "." * (width - filled)


def _endpoints(target: Mapping[str, Any], rates: Mapping[str, float] | None = None) -> list[str]:
    endpoints: dict[str, int] = target["endpoints"]
    total = sum(endpoints.values()) or 1
    lines = []
    for name, count in sorted(endpoints.items()):
        share = count / total
        now = "" if rates is None else f"  {rates.get(name, 0.0):6.1f} req/s now"
        lines.append(f"      {name:<10} {count:>7}  {share:6.1%}  {_bar(share)}{now}")
    return lines


@dataclass
class EndpointSeen:
    """An endpoint of a cluster as the sidecar last showed it."""

    name: str  # the backend's name when known, else its address
    address: str
    connect_failures: int = 0
    times_ejected: int = 0
    ejected: bool = False


@dataclass
class ClusterSeen:
    """A cluster's counters as the sidecar last showed them (totals since it appeared)."""

    service: str
    connections: int = 0
    retries: int = 0
    ejections: int = 0
    connect_failures: int = 0
    no_endpoint: int = 0
    endpoints: dict[str, EndpointSeen] = field(default_factory=dict)  # by address


def _service(name: str, cluster: Mapping[str, Any]) -> str:
    # "default/web" -> "web"; a cluster without a service (the passthrough): its name.
    return str(cluster.get("service") or name).rpartition("/")[2]


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


@dataclass
class SidecarRecord:
    """What the client pod's sidecar did, from its /clusters pages as they are read.

    An endpoint that leaves its cluster (a crashed pod removed from its
    EndpointSlice) keeps what was last seen of it, so the summary can still
    name it.
    """

    clusters: dict[str, ClusterSeen] = field(default_factory=dict)  # by cluster name
    read: int = 0  # pages taken

    def update(self, page: Mapping[str, Any], names: Mapping[str, str]) -> list[str]:
        """Take a /clusters page; `names` maps "IP:PORT" to a backend's name. What the
        sidecar did since the last page, as lines for "what happened"."""
        self.read += 1
        events = []
        for cluster_name, cluster in sorted(page.items()):
            if not isinstance(cluster, Mapping):
                continue
            service = _service(cluster_name, cluster)
            seen = self.clusters.setdefault(cluster_name, ClusterSeen(service))
            retries_before = seen.retries
            seen.connections = int(cluster.get("connections", 0))
            seen.retries = int(cluster.get("retries", 0))
            seen.ejections = int(cluster.get("ejections", 0))
            seen.connect_failures = int(cluster.get("connect_failures", 0))
            seen.no_endpoint = int(cluster.get("refused_no_endpoint", 0))
            current = set()
            ejected_now = []
            for endpoint in cluster.get("endpoints", []):
                address = str(endpoint.get("address", ""))
                current.add(address)
                known = seen.endpoints.setdefault(
                    address, EndpointSeen(names.get(address, address), address)
                )
                times_before = known.times_ejected
                known.connect_failures = int(endpoint.get("connect_failures", 0))
                known.times_ejected = int(endpoint.get("times_ejected", 0))
                known.ejected = bool(endpoint.get("ejected", False))
                if known.times_ejected > times_before:
                    ejected_now.append(known)
            for address, known in seen.endpoints.items():
                if address not in current:
                    known.ejected = False  # gone from the cluster: not ejected any more
            for known in ejected_now:
                events.append(
                    f"sidecar ejected {known.name} ({known.address}) from {service} after "
                    f"{_plural(known.connect_failures, 'connect failure')}; "
                    f"{_plural(seen.retries, 'connect')} retried on another endpoint so far"
                )
            if not ejected_now and seen.retries > retries_before:
                new = seen.retries - retries_before
                events.append(
                    f"sidecar retried {_plural(new, f'{service} connect')} on another "
                    f"endpoint ({seen.retries} so far)"
                )
        return events

    def used(self) -> list[ClusterSeen]:
        """The clusters the sidecar connected to or tried to, by service."""
        return sorted(
            (c for c in self.clusters.values() if c.connections or c.connect_failures),
            key=lambda c: c.service,
        )

    def status(self) -> list[str]:
        """For the live screen: per busy cluster, its counters and who is ejected now."""
        if not self.read:
            return ["  sidecar: (its /clusters not read yet)"]
        lines = []
        for c in self.used():
            ejected = [e.name for e in c.endpoints.values() if e.ejected]
            now = f"; ejected now: {', '.join(ejected)}" if ejected else ""
            lines.append(
                f"  sidecar {c.service:<6} {_plural(c.connect_failures, 'connect failure')}, "
                f"{c.retries} retried on another endpoint, "
                f"{_plural(c.ejections, 'ejection')}{now}"
            )
        return lines or ["  sidecar: no connections yet"]

    def summary(self) -> list[str]:
        """For the closing summary: what the sidecar did, per cluster and ejected endpoint."""
        lines = ["  the client's sidecar (from its admin page /clusters):"]
        if not self.read:
            return [*lines, "    (its /clusters could not be read)"]
        for c in self.used():
            if not (c.connect_failures or c.ejections or c.no_endpoint):
                lines.append(f"    {c.service}: no connect failed, nothing retried or ejected")
                continue
            lines.append(
                f"    {c.service}: {_plural(c.connect_failures, 'connect')} failed, "
                f"{c.retries} retried on another endpoint, "
                f"{_plural(c.ejections, 'endpoint ejection')}"
                + (f", {c.no_endpoint} found no endpoint" if c.no_endpoint else "")
            )
            for e in sorted(c.endpoints.values(), key=lambda e: e.name):
                if e.times_ejected:
                    lines.append(
                        f"      {e.name} ({e.address}) ejected {_times(e.times_ejected)}, "
                        f"after {_plural(e.connect_failures, 'connect failure')}"
                    )
        if len(lines) == 1:
            lines.append("    no connections")
        return lines


def look_commands(sidecar_admin: str, control_plane_admin: str) -> list[tuple[str, str]]:
    """meshlet commands that show the running mesh, each with what it shows."""
    return [
        (
            f"meshlet proxy-config endpoints --admin {sidecar_admin}",
            "the sidecar's endpoints, ejected or not",
        ),
        (f"meshlet proxy-config clusters --admin {sidecar_admin}", "its clusters"),
        (
            f"meshlet proxy-status --control-plane {control_plane_admin}",
            "each sidecar: SYNCED, STALE or NACKED",
        ),
    ]


def header_lines(
    length: str, rate: float, sidecar_admin: str, control_plane_admin: str, manifests: str
) -> list[str]:
    """The lines above the live screen (and at the start of a run that is not on a
    terminal): what runs, and where to look while it does."""
    sidecar = f"http://{sidecar_admin}"
    plane = f"http://{control_plane_admin}"
    commands = look_commands(sidecar_admin, control_plane_admin)
    width = max(len(command) for command, _ in commands)
    return [
        f"meshlet demo ({length}): the client pod calls web and api by name, "
        f"{rate:g} requests/s each, a new connection each",
        f"  sidecar admin  {sidecar}/config_dump  /clusters  /metrics",
        f"  control plane  {plane}/debug/config  /debug/clients  /metrics",
        f"  manifests      {manifests}",
        "  look while it runs:",
        *(f"    {command:<{width}}  {what}" for command, what in commands),
    ]


def next_steps(sidecar_admin: str, control_plane_admin: str, work: str) -> list[str]:
    """The closing hint: how to look at a running demo (its addresses are usually the
    same as this run's), and what the demo leaves behind."""
    commands = [
        *look_commands(sidecar_admin, control_plane_admin),
        (f"curl http://{sidecar_admin}/metrics", "the sidecar's Prometheus metrics"),
    ]
    width = max(len(command) for command, _ in commands)
    return [
        "where to look next: run `meshlet demo` (no --duration) and, while it runs",
        "(its header shows the addresses; usually the same as this run's),",
        *(f"  {command:<{width}}  {what}" for command, what in commands),
        f"  the manifests and every process's log stay in {work}",
        "  everything else the demo made (namespaces, links, nftables, processes) is gone.",
    ]


def render(
    report: Report,
    rates: Rates,
    events: Sequence[str],
    header: Sequence[str],
    sidecar: SidecarRecord | None = None,
) -> str:
    lines = [*header, ""]
    for name, target in report["targets"].items():
        addresses = ", ".join(target.get("addresses", [])) or "(not resolved)"
        rate = rates.per_second.get(name, 0.0)
        lines.append(
            f"  {name:<6} DNS -> {addresses:<16} {rate:7.1f} req/s   ok {target['ok']:>6}"
            f"   failed {target['errors']:>3}"
        )
        now = {e: r for (t, e), r in rates.per_endpoint.items() if t == name}
        lines += _endpoints(target, now)
        if target["errors"]:
            lines.append(f"      last error: {target['last_error']}")
    if sidecar is not None:
        lines += ["", *sidecar.status()]
    lines += ["", "  what happened:"]
    lines += [f"    {event}" for event in events[-8:]] or ["    (nothing yet)"]
    return "\n".join(lines)


def summary(report: Report, sidecar: SidecarRecord | None = None) -> list[str]:
    lines = ["summary:"]
    total_ok = total_failed = 0
    for name, target in report["targets"].items():
        total_ok += target["ok"]
        total_failed += target["errors"]
        addresses = ", ".join(target.get("addresses", []))
        ok, failed = target["ok"], target["errors"]
        lines.append(f"  {name}: {ok} requests, {failed} failed; DNS {name} -> {addresses}")
        lines += _endpoints(target)
    lines.append(f"  total: {total_ok} requests, {total_failed} failed")
    if sidecar is not None:
        lines += sidecar.summary()
    return lines
