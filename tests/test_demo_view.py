"""What `meshlet demo` prints, from what it read (pure): the sidecar's retries and
ejections from its /clusters pages, the header, and the closing hint's commands."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from meshlet.cli import build_parser
from meshlet.devmesh.view import (
    Rates,
    SidecarRecord,
    header_lines,
    look_commands,
    next_steps,
    render,
    summary,
)

WEB = "outbound|80||web.default.svc.cluster.local"
API = "outbound|8080||api.default.svc.cluster.local"
NAMES = {"10.250.0.2:8080": "web-0", "10.250.0.3:8080": "web-1", "10.250.0.4:8080": "api-0"}


def endpoint(address: str, failures: int = 0, ejections: int = 0, ejected: bool = False) -> Any:
    """An endpoint as the sidecar's /clusters shows it (meshlet/sidecar/admin.py)."""
    return {
        "address": address,
        "health": "HEALTHY",
        "zone": "",
        "weight": 1,
        "active_connections": 0,
        "connections": 10,
        "connect_failures": failures,
        "ejected": ejected,
        "ejected_for_seconds": 30.0 if ejected else 0,
        "times_ejected": ejections,
    }


def cluster(service: str, endpoints: list[Any], **counters: int) -> Any:
    return {
        "lb_policy": "ROUND_ROBIN",
        "service": f"default/{service}",
        "endpoints": endpoints,
        "active_connections": 0,
        "connections": counters.get("connections", 20),
        "connect_failures": counters.get("connect_failures", 0),
        "retries": counters.get("retries", 0),
        "ejections": counters.get("ejections", 0),
        "refused_circuit_breaker": 0,
        "refused_no_endpoint": counters.get("no_endpoint", 0),
        "max_connections": 1024,
    }


def page(web: list[Any], **web_counters: int) -> Any:
    return {
        WEB: cluster("web", web, **web_counters),
        API: cluster("api", [endpoint("10.250.0.4:8080")]),
        "PassthroughCluster": {"lb_policy": "CLUSTER_PROVIDED", "service": "", "endpoints": []},
    }


def test_a_crashed_endpoint_is_named_when_ejected_and_after_it_left_its_cluster() -> None:
    record = SidecarRecord()
    healthy = [endpoint("10.250.0.2:8080"), endpoint("10.250.0.3:8080")]
    assert record.update(page(healthy), NAMES) == []
    assert record.status() == [
        "  sidecar api    0 connect failures, 0 retried on another endpoint, 0 ejections",
        "  sidecar web    0 connect failures, 0 retried on another endpoint, 0 ejections",
    ]

    failing = [endpoint("10.250.0.2:8080"), endpoint("10.250.0.3:8080", failures=2)]
    assert record.update(page(failing, connect_failures=2, retries=2), NAMES) == [
        "sidecar retried 2 web connects on another endpoint (2 so far)"
    ]

    ejected = [
        endpoint("10.250.0.2:8080"),
        endpoint("10.250.0.3:8080", failures=5, ejections=1, ejected=True),
    ]
    assert record.update(page(ejected, connect_failures=5, retries=5, ejections=1), NAMES) == [
        "sidecar ejected web-1 (10.250.0.3:8080) from web after 5 connect failures; "
        "5 connects retried on another endpoint so far"
    ]
    assert record.status()[1] == (
        "  sidecar web    5 connect failures, 5 retried on another endpoint, 1 ejection; "
        "ejected now: web-1"
    )

    # web-1 leaves the EndpointSlice: the sidecar shows it no more, the record keeps it.
    gone = [endpoint("10.250.0.2:8080")]
    assert record.update(page(gone, connect_failures=5, retries=5, ejections=1), NAMES) == []
    assert "ejected now" not in record.status()[1]
    assert record.summary() == [
        "  the client's sidecar (from its admin page /clusters):",
        "    api: no connect failed, nothing retried or ejected",
        "    web: 5 connects failed, 5 retried on another endpoint, 1 endpoint ejection",
        "      web-1 (10.250.0.3:8080) ejected once, after 5 connect failures",
    ]


def test_an_endpoint_ejected_again_is_an_event_again_and_counted() -> None:
    record = SidecarRecord()
    first = [endpoint("10.250.0.3:8080", failures=5, ejections=1, ejected=True)]
    record.update(page(first, connect_failures=5, retries=5, ejections=1), NAMES)
    again = [endpoint("10.250.0.3:8080", failures=6, ejections=2, ejected=True)]
    events = record.update(page(again, connect_failures=6, retries=6, ejections=2), NAMES)
    assert events == [
        "sidecar ejected web-1 (10.250.0.3:8080) from web after 6 connect failures; "
        "6 connects retried on another endpoint so far"
    ]
    assert "      web-1 (10.250.0.3:8080) ejected 2 times, after 6 connect failures" in (
        record.summary()
    )


def test_an_endpoint_it_has_no_name_for_is_shown_by_its_address() -> None:
    record = SidecarRecord()
    ejected = [endpoint("10.9.9.9:8080", failures=5, ejections=1, ejected=True)]
    (event,) = record.update(page(ejected, connect_failures=5, retries=4, ejections=1), {})
    assert event.startswith("sidecar ejected 10.9.9.9:8080 (10.9.9.9:8080) from web")


def test_connects_that_found_no_endpoint_are_in_the_summary() -> None:
    record = SidecarRecord()
    record.update(page([], connect_failures=3, no_endpoint=3), NAMES)
    assert (
        "    web: 3 connects failed, 0 retried on another endpoint, 0 endpoint ejections, "
        "3 found no endpoint"
    ) in record.summary()


def test_a_sidecar_never_read_says_so() -> None:
    record = SidecarRecord()
    assert record.summary() == [
        "  the client's sidecar (from its admin page /clusters):",
        "    (its /clusters could not be read)",
    ]
    assert record.status() == ["  sidecar: (its /clusters not read yet)"]


REPORT = {
    "elapsed": 5.0,
    "targets": {
        "web": {
            "ok": 100,
            "errors": 0,
            "endpoints": {"web-0": 60, "web-1": 40},
            "addresses": ["10.96.0.20"],
        }
    },
}


def test_the_screen_and_the_summary_show_what_the_sidecar_did() -> None:
    record = SidecarRecord()
    ejected = [endpoint("10.250.0.3:8080", failures=5, ejections=1, ejected=True)]
    events = record.update(page(ejected, connect_failures=5, retries=5, ejections=1), NAMES)
    screen = render(REPORT, Rates(), [f"  4.5s  {e}" for e in events], ["HEADER"], record)
    assert "ejected now: web-1" in screen
    assert "what happened:\n      4.5s  sidecar ejected web-1 (10.250.0.3:8080)" in screen
    lines = summary(REPORT, record)
    assert lines[-1] == "      web-1 (10.250.0.3:8080) ejected once, after 5 connect failures"
    # Without a record, as before.
    assert summary(REPORT)[-1] == "  total: 100 requests, 0 failed"


def test_the_header_names_both_admin_addresses_and_the_commands_to_look() -> None:
    lines = header_lines("20s", 40.0, "10.250.0.8:15000", "10.250.0.7:15014", "/tmp/m")
    text = "\n".join(lines)
    assert "http://10.250.0.8:15000/config_dump" in text
    assert "http://10.250.0.7:15014/debug/config" in text
    assert "meshlet proxy-config endpoints --admin 10.250.0.8:15000" in text
    assert "meshlet proxy-status --control-plane 10.250.0.7:15014" in text
    hint = "\n".join(next_steps("10.250.0.8:15000", "10.250.0.7:15014", "/tmp/work"))
    assert "meshlet proxy-config endpoints --admin 10.250.0.8:15000" in hint
    assert "stay in /tmp/work" in hint


def _meshlet_commands(lines: list[str]) -> list[list[str]]:
    """Each meshlet command in the lines: in backquotes, or first in a column of
    commands (a command, then after two spaces what it shows)."""
    found = []
    for line in lines:
        commands = re.findall(r"`(meshlet [^`]*)`", line)
        column = line.strip().split("  ")[0]
        if line.startswith(" ") and column.startswith("meshlet "):
            commands.append(column)
        found += [shlex.split(command)[1:] for command in commands]
    return found


@pytest.mark.parametrize(
    "lines",
    [
        next_steps("10.250.0.8:15000", "[fd00::7]:15014", "/tmp/work"),
        header_lines("20s", 40.0, "10.250.0.8:15000", "10.250.0.7:15014", "/tmp/m"),
    ],
    ids=["closing hint", "header"],
)
def test_every_meshlet_command_it_names_exists_with_those_flags(lines: list[str]) -> None:
    commands = _meshlet_commands(lines)
    assert {c[0] for c in commands} >= {"proxy-config", "proxy-status"}
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # exits (SystemExit) on an unknown command or flag
        assert args.command == argv[0]


def test_the_commands_name_the_addresses_they_are_given() -> None:
    commands = [c for c, _ in look_commands("a:1", "b:2")]
    assert commands == [
        "meshlet proxy-config endpoints --admin a:1",
        "meshlet proxy-config clusters --admin a:1",
        "meshlet proxy-status --control-plane b:2",
    ]
