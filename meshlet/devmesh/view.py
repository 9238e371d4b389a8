"""What `meshlet demo` shows: the load generator's reports as text (pure).

A report is the JSON line meshlet.devmesh.load prints: per target the requests
that succeeded and failed so far, by answering backend, and the addresses its
name resolved to. `Rates` turns two successive reports into requests per
second; `render` draws one screen; `summary` the closing table.
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


def render(report: Report, rates: Rates, events: Sequence[str], header: Sequence[str]) -> str:
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
    lines += ["", "  what happened:"]
    lines += [f"    {event}" for event in events[-8:]] or ["    (nothing yet)"]
    return "\n".join(lines)


def summary(report: Report) -> list[str]:
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
    return lines
