"""The control plane reachable and ready: its admin port's `/readyz`."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from meshlet.checks import Result, failed, passed

REACHABLE_NAME = "the control plane is reachable"
READY_NAME = "the control plane is ready"
_BODY_CHARS = 300


@dataclass(frozen=True)
class ReadyProbe:
    address: str  # HOST:PORT of its admin port
    status: int | None = None  # /readyz's HTTP status; None when nothing answered
    body: str = ""
    error: str = ""  # why nothing answered


def probe_ready(address: str, timeout: float = 5.0) -> ReadyProbe:
    url = f"http://{address}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return ReadyProbe(
                address, int(response.status), response.read().decode(errors="replace")
            )
    except urllib.error.HTTPError as exc:
        with exc:
            return ReadyProbe(address, exc.code, exc.read().decode(errors="replace"))
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return ReadyProbe(address, error=str(getattr(reason, "strerror", None) or reason))


def check_reachable(probe: ReadyProbe) -> Result:
    if probe.status is None:
        return failed(
            REACHABLE_NAME,
            f"nothing answered at {probe.address}: {probe.error}",
            "give its admin address with --control-plane HOST:PORT (on Kubernetes: "
            "kubectl -n meshlet-system port-forward svc/meshlet 15014, or the Service's name)",
        )
    return passed(REACHABLE_NAME, probe.address)


def check_ready(probe: ReadyProbe) -> Result:
    if probe.status is None:
        return failed(READY_NAME, "not asked: it is not reachable", "fix the check above first")
    if probe.status == 200:
        return passed(READY_NAME)
    said = " ".join(probe.body.split())[:_BODY_CHARS] or "(nothing)"
    return failed(
        READY_NAME,
        f"/readyz answered HTTP {probe.status}: {said}",
        f"see what it is waiting for: http://{probe.address}/debug/problems and its log",
    )


def run_checks(address: str) -> tuple[Result, ...]:
    probe = probe_ready(address)
    return (check_reachable(probe), check_ready(probe))
