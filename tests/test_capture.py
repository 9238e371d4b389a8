"""`meshlet init`: the capture ruleset from its pure builder (golden files), and applied
for real with nft inside a throwaway network namespace.

Golden files live in tests/data/capture/; after a deliberate change to the rules,
rewrite them with MESHLET_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from meshlet.capture.ruleset import CaptureConfig, apply_script, build_rules, remove_script
from meshlet.devmesh import netns
from tests.netlab import inside_capture_lab, lab_pod
from tests.procs import PYTHON

GOLDEN = Path(__file__).parent / "data" / "capture"
ROOT = Path(__file__).resolve().parent.parent


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MESHLET_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; MESHLET_UPDATE_GOLDEN=1 rewrites it"


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_default_ruleset() -> None:
    golden("default.nft", apply_script(CaptureConfig(dns_servers=(ip("10.96.0.10"),))))


def test_dual_stack_ruleset_with_exclusions() -> None:
    config = CaptureConfig(
        outbound_port=15006,
        dns_port=15054,
        service_cidrs=(net("fd00:10:96::/112"), net("10.96.0.0/12"), net("10.100.0.0/16")),
        dns_servers=(ip("fd00:10:96::a"), ip("10.96.0.10"), ip("169.254.20.10")),
        proxy_uid=1337,
        proxy_gid=1337,
        exclude_ports=(15020, 22, 22),
        exclude_cidrs=(net("10.96.0.1/32"), net("fd00:10:96::1/128")),
    )
    golden("dual-stack.nft", apply_script(config))


def test_without_nameservers_dns_is_left_alone() -> None:
    script = apply_script(CaptureConfig())
    assert "dport 53" not in script
    assert "redirect to :15001" in script


def test_remove_script() -> None:
    golden("remove.nft", remove_script())


def meshlet(
    *args: str, namespace: str | None = None, uid: int | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [PYTHON, "-m", "meshlet", *args]
    if namespace is not None:
        argv = netns.exec_argv(namespace, argv, uid)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_dry_run_prints_the_script_from_flags_and_resolv_conf(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "search default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver 10.0.0.2:5353\n"
    )
    result = meshlet("init", "--dry-run", f"--resolv-conf={resolv}", "--exclude-port=22")
    assert result.returncode == 0, result.stderr
    expected = apply_script(
        CaptureConfig(dns_servers=(ip("10.96.0.10"),), exclude_ports=(22,))  # 5353: not port 53
    )
    assert result.stdout == expected


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--service-cidr=10.96.0.1/12", "'10.96.0.1/12' is not a CIDR"),
        ("--dns-server=nameserver", "'nameserver' is not an IP address"),
        ("--exclude-port=70000", "'70000' is not a port number"),
        ("--proxy-uid=-1", "'-1' is not a user or group id"),
    ],
)
def test_bad_flags_are_refused(flag: str, message: str) -> None:
    result = meshlet("init", "--dry-run", flag)
    assert result.returncode == 2
    assert message in result.stderr


# --- applied for real ------------------------------------------------------------


@pytest.fixture
def namespace() -> Iterator[str]:
    with lab_pod() as (_, pod):
        yield pod.namespace


def ruleset(namespace: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "ruleset"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_init_installs_the_table_twice_the_same_and_removes_only_it(namespace: str) -> None:
    # A table of someone else's, which --remove must leave alone.
    other = "table inet other {\n\tchain c {\n\t\ttype filter hook output priority 0;\n\t}\n}\n"
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=other, text=True, check=True
    )
    flags = [
        "--dns-server=10.96.0.10",
        "--service-cidr=10.96.0.0/12",
        "--service-cidr=fd00:96::/108",
    ]
    first = meshlet("init", *flags, namespace=namespace)
    assert first.returncode == 0, first.stderr
    installed = ruleset(namespace)
    assert "table inet meshlet" in installed
    assert "ip daddr 10.96.0.0/12 meta l4proto tcp redirect to :15001" in installed
    assert "ip6 daddr fd00:96::/108 meta l4proto tcp redirect to :15001" in installed
    assert "ip daddr 10.96.0.10 udp dport 53 redirect to :15053" in installed
    assert "meta skuid 1337 return" in installed
    again = meshlet("init", *flags, namespace=namespace)
    assert again.returncode == 0, again.stderr
    assert ruleset(namespace) == installed
    removed = meshlet("init", "--remove", namespace=namespace)
    assert removed.returncode == 0, removed.stderr
    left = ruleset(namespace)
    assert "meshlet" not in left
    assert "table inet other" in left
    # It says what it removed: its one chain and the rules the flags made.
    rules = build_rules(
        CaptureConfig(
            service_cidrs=(net("10.96.0.0/12"), net("fd00:96::/108")),
            dns_servers=(ip("10.96.0.10"),),
        )
    )
    assert removed.stderr.splitlines() == [
        f"meshlet init: removed table inet meshlet (1 chain, {len(rules)} rules)"
    ]
    # Removing what is not there is no error, and it says there was nothing.
    again = meshlet("init", "--remove", namespace=namespace)
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines() == [
        "meshlet init: no meshlet rules to remove in this network namespace (no table inet meshlet)"
    ]
    assert "table inet other" in ruleset(namespace)


def test_remove_where_there_never_was_a_table_says_so(namespace: str) -> None:
    result = meshlet("init", "--remove", namespace=namespace)
    assert result.returncode == 0, result.stderr
    assert "meshlet init: no meshlet rules to remove in this network namespace" in result.stderr
    assert "meshlet" not in ruleset(namespace)


def test_remove_without_cap_net_admin_says_so_and_changes_nothing(namespace: str) -> None:
    installed = meshlet("init", "--dns-server=10.96.0.10", namespace=namespace)
    assert installed.returncode == 0, installed.stderr
    result = meshlet("init", "--remove", namespace=namespace, uid=65534)
    assert result.returncode == 1
    assert "CAP_NET_ADMIN is missing" in result.stderr
    assert "table inet meshlet" in ruleset(namespace)


def test_without_cap_net_admin_it_says_so_and_changes_nothing(namespace: str) -> None:
    result = meshlet("init", "--dns-server=10.96.0.10", namespace=namespace, uid=65534)
    assert result.returncode == 1
    assert "CAP_NET_ADMIN is missing" in result.stderr
    assert "nothing was changed" in result.stderr
    assert "meshlet" not in ruleset(namespace)


def test_without_nft_it_says_so_and_changes_nothing(namespace: str) -> None:
    result = meshlet("init", "--nft=/nonexistent/nft", namespace=namespace)
    assert result.returncode == 1
    assert "nftables is not installed (/nonexistent/nft not found" in result.stderr
    assert "meshlet" not in ruleset(namespace)


def test_a_dry_run_changes_nothing(namespace: str) -> None:
    result = meshlet("init", "--dry-run", "--dns-server=10.96.0.10", namespace=namespace)
    assert result.returncode == 0
    assert "table inet meshlet {" in result.stdout
    assert "meshlet" not in ruleset(namespace)


# --- what the rules do to real packets --------------------------------------------


def listener(family: int, kind: int, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    sock.settimeout(3)
    return sock


@pytest.mark.parametrize(
    ("family", "nameserver"), [(socket.AF_INET, "10.96.0.10"), (socket.AF_INET6, "fd00:96::a")]
)
def test_dns_to_the_nameserver_reaches_the_dns_port_over_udp_and_tcp(
    family: int, nameserver: str
) -> None:
    with inside_capture_lab():
        with (
            listener(family, socket.SOCK_DGRAM, 15053) as dns_udp,
            socket.socket(family, socket.SOCK_DGRAM) as app,
        ):
            app.settimeout(3)
            app.sendto(b"query", (nameserver, 53))
            data, peer = dns_udp.recvfrom(100)
            assert data == b"query"
            dns_udp.sendto(b"answer", peer)
            answer, source = app.recvfrom(100)
            assert answer == b"answer" and source[:2] == (nameserver, 53)  # un-NATed
        with (
            listener(family, socket.SOCK_STREAM, 15053) as dns_tcp,
            socket.create_connection((nameserver, 53), timeout=3),
        ):
            accepted, _ = dns_tcp.accept()
            accepted.close()


def captured(port: int, destination: tuple[str, int], argv_prefix: Sequence[str] = ()) -> bool:
    """Whether a connect to `destination` (from a process run with `argv_prefix`) lands on
    the outbound port."""
    with listener(socket.AF_INET, socket.SOCK_STREAM, port) as outbound:
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection({destination!r}, timeout=0.5)\n"
            "except OSError:\n"
            "    pass\n"
        )
        subprocess.run([*argv_prefix, sys.executable, "-c", code], timeout=30, check=True)
        outbound.settimeout(0.2)
        try:
            outbound.accept()[0].close()
            return True
        except TimeoutError:
            return False


def test_exclusions_and_the_proxy_uid_and_gid_are_not_captured() -> None:
    extra = ["--exclude-port=8443", "--exclude-cidr=10.96.7.0/24", "--proxy-gid=4242"]
    with inside_capture_lab(extra=extra):
        assert captured(15001, ("10.96.0.50", 80))
        assert not captured(15001, ("10.96.0.50", 8443))  # excluded port
        assert not captured(15001, ("10.96.7.7", 80))  # excluded CIDR
        assert not captured(15001, ("10.96.1.1", 8080), netns.setpriv_argv(1337))  # proxy uid
        assert not captured(15001, ("10.96.1.1", 8080), netns.setpriv_argv(4000, 4242))  # gid
        assert captured(15001, ("10.96.1.1", 8080), netns.setpriv_argv(4000, 4000))  # others are
