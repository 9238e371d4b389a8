"""A pod's capture prerequisites: nft runs, CAP_NET_ADMIN, NAT REDIRECT, SO_ORIGINAL_DST.

The REDIRECT and SO_ORIGINAL_DST probe adds a throwaway table of its own (a fresh
name, never meshlet's `inet meshlet`), whose one rule redirects only the probe's
own loopback connection (matched by its source port) to a listener of the probe's,
asks the accepted socket where it was going, and deletes the table, also when a
step fails or the check is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType

from meshlet.binaries import find_binary
from meshlet.capture.nft import CAP_NET_ADMIN, NftError, effective_capabilities, run_script
from meshlet.checks import Result, failed, passed
from meshlet.sidecar.proxy.original_dst import key_address, original_key

NFT_NAME = "nft runs"
CAP_NAME = "CAP_NET_ADMIN is held"
REDIRECT_NAME = "the kernel does NAT REDIRECT"
ORIGINAL_DST_NAME = "SO_ORIGINAL_DST gives a redirected connection's destination"
FAMILY = "inet"
TABLE_PREFIX = "meshlet-check-"

# --- nft ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NftProbe:
    nft: str  # as asked for: "nft", or a path
    path: str | None  # where it was found
    version: str = ""  # what `nft --version` printed, when it ran
    error: str = ""  # why it did not run


def probe_nft(nft: str) -> NftProbe:
    binary = find_binary(nft)
    if binary is None:
        return NftProbe(nft, None, error=f"{nft} not found on PATH or in /usr/sbin, /sbin")
    try:
        run = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return NftProbe(nft, binary, error=f"{binary} could not run: {exc}")
    if run.returncode != 0:
        said = (run.stderr or run.stdout).strip()
        return NftProbe(nft, binary, error=f"{binary} --version exited {run.returncode}: {said}")
    return NftProbe(nft, binary, version=run.stdout.strip())


def check_nft(probe: NftProbe) -> Result:
    if probe.path is None:
        return failed(
            NFT_NAME, probe.error, "install the nftables package (apt-get install nftables)"
        )
    if probe.error:
        return failed(NFT_NAME, probe.error, "reinstall the nftables package")
    return passed(NFT_NAME, f"{probe.version}, {probe.path}")


# --- CAP_NET_ADMIN --------------------------------------------------------------------


def check_net_admin(cap_eff: int | None) -> Result:
    hint = "run as root, or give the container the NET_ADMIN capability (securityContext)"
    if cap_eff is None:
        return failed(CAP_NAME, "could not read CapEff from /proc/self/status", hint)
    if cap_eff >> CAP_NET_ADMIN & 1:
        return passed(CAP_NAME)
    return failed(
        CAP_NAME, f"this process's effective capabilities (CapEff {cap_eff:016x}) lack it", hint
    )


# --- REDIRECT and SO_ORIGINAL_DST -------------------------------------------------------


@dataclass(frozen=True)
class RedirectProbe:
    table: str
    # Why the table with its redirect rule could not be added; "" when it was.
    add_error: str = ""
    # Per family ("IPv4", "IPv6"): the destination the client dialled, and what
    # SO_ORIGINAL_DST gave on the accepted socket (an address, or what went wrong).
    dialled: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    seen: Mapping[str, tuple[str, int] | str] = field(default_factory=dict)
    # Families not tried, and why ("no ::1 in this network namespace").
    untried: Mapping[str, str] = field(default_factory=dict)
    # Why the table could not be deleted afterwards; "" when it was (or never added).
    delete_error: str = ""
    # When the probe was not run at all (no nft, no CAP_NET_ADMIN): why.
    skipped: str = ""


def table_name() -> str:
    """A table name no one else uses: this process's PID and random hex."""
    return f"{TABLE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def redirect_script(table: str, rules: Mapping[str, tuple[str, int, int, int]]) -> str:
    """The throwaway table: per family (keyword "ip" or "ip6"), redirect TCP from the
    client's source port to (address, dport) to the listener's port, nothing else."""
    lines = [
        f"table {FAMILY} {table} {{",
        "\tchain output {",
        "\t\ttype nat hook output priority -100; policy accept;",
    ]
    for keyword, (address, sport, dport, to_port) in rules.items():
        lines.append(
            f"\t\t{keyword} daddr {address} tcp sport {sport} tcp dport {dport} "
            f'redirect to :{to_port} comment "meshlet check"'
        )
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def delete_script(table: str) -> str:
    # "add; delete": valid whether or not the table is there, and touches nothing else.
    return f"add table {FAMILY} {table}\ndelete table {FAMILY} {table}\n"


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit for the block (main thread only), so `finally` runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_FAMILIES = (("IPv4", socket.AF_INET, "127.0.0.1", "ip"), ("IPv6", socket.AF_INET6, "::1", "ip6"))


def probe_redirect(nft: str, timeout: float = 5.0) -> RedirectProbe:
    """Add the throwaway table, connect through it on loopback, delete it."""
    table = table_name()
    with contextlib.ExitStack() as sockets:
        plans: dict[str, tuple[str, int, int, int]] = {}
        ends: dict[str, tuple[socket.socket, socket.socket, str, int]] = {}
        untried: dict[str, str] = {}
        for name, family, address, keyword in _FAMILIES:
            try:
                listener = sockets.enter_context(socket.socket(family, socket.SOCK_STREAM))
                listener.bind((address, 0))
                listener.listen(1)
                # Bound, never listening: the port dialled, so nobody else takes it meanwhile.
                target = sockets.enter_context(socket.socket(family, socket.SOCK_STREAM))
                target.bind((address, 0))
                client = sockets.enter_context(socket.socket(family, socket.SOCK_STREAM))
                client.bind((address, 0))
            except OSError as exc:
                untried[name] = f"no {address} here ({exc.strerror or exc})"
                continue
            dport = target.getsockname()[1]
            plans[keyword] = (address, client.getsockname()[1], dport, listener.getsockname()[1])
            ends[name] = (listener, client, address, dport)
        if not plans:
            return RedirectProbe(table, add_error="no loopback address to test on", untried=untried)
        with _sigterm_unwinds():
            try:
                run_script(nft, redirect_script(table, plans))
            except NftError as exc:
                return RedirectProbe(table, add_error=str(exc), untried=untried)
            seen: dict[str, tuple[str, int] | str] = {}
            dialled: dict[str, tuple[str, int]] = {}
            delete_error = ""
            try:
                for name, (listener, client, address, dport) in ends.items():
                    dialled[name] = (address, dport)
                    seen[name] = _through(listener, client, address, dport, timeout, name == "IPv6")
            finally:
                try:
                    run_script(nft, delete_script(table))
                except NftError as exc:
                    delete_error = str(exc)
    return RedirectProbe(table, "", dialled, seen, untried, delete_error)


def _through(
    listener: socket.socket,
    client: socket.socket,
    address: str,
    port: int,
    timeout: float,
    ipv6: bool,
) -> tuple[str, int] | str:
    """Connect the client to address:port; what SO_ORIGINAL_DST says on the accepted end."""
    client.settimeout(timeout)
    listener.settimeout(timeout)
    try:
        client.connect((address, port))
        accepted, _ = listener.accept()
    except OSError as exc:
        return f"the connection to {address} port {port} was not redirected ({exc.strerror or exc})"
    with accepted:
        key = original_key(accepted, ipv6)
    if key is None:
        return "getsockopt(SO_ORIGINAL_DST) failed: conntrack has no NAT entry for it"
    return key_address(key)


def not_probed(table: str, why: str) -> RedirectProbe:
    return RedirectProbe(table, skipped=why)


def check_redirect(probe: RedirectProbe) -> Result:
    if probe.skipped:
        return failed(REDIRECT_NAME, f"not tried: {probe.skipped}", "fix the checks above first")
    if probe.add_error:
        return failed(
            REDIRECT_NAME,
            f"a redirect rule could not be added: {probe.add_error}",
            "the kernel needs nf_tables with NAT (nft_nat, nft_redir, nf_conntrack); "
            "load them on the node (modprobe), or use a kernel that has them",
        )
    if probe.delete_error:
        return failed(
            REDIRECT_NAME,
            f"the test table could not be deleted: {probe.delete_error}",
            f"delete it by hand: nft delete table {FAMILY} {probe.table}",
        )
    return passed(REDIRECT_NAME, f"table {FAMILY} {probe.table} added and deleted")


def check_original_dst(probe: RedirectProbe) -> Result:
    hint = "the kernel needs nf_conntrack (and IPv6 conntrack for IPv6) loaded on the node"
    if probe.skipped or probe.add_error:
        return failed(
            ORIGINAL_DST_NAME, "not tried: no redirect rule", "fix the checks above first"
        )
    problems, good = [], []
    for name, dialled in probe.dialled.items():
        seen = probe.seen.get(name, "not tried")
        if isinstance(seen, str):
            problems.append(f"{name}: {seen}")
        elif tuple(seen) != tuple(dialled):
            problems.append(
                f"{name}: gave {seen[0]} port {seen[1]}, not {dialled[0]} port {dialled[1]}"
            )
        else:
            good.append(name)
    if not probe.dialled:
        problems.append("no connection was tried")
    if any("was not redirected" in p for p in problems):
        hint = (
            "the loopback connection through the redirect did not arrive: is lo up in this "
            "network namespace, and does no firewall rule drop it?"
        )
    if problems:
        return failed(ORIGINAL_DST_NAME, "; ".join(problems), hint)
    detail = ", ".join(good)
    if probe.untried:
        detail += "; not tried: " + "; ".join(f"{k}: {v}" for k, v in probe.untried.items())
    return passed(ORIGINAL_DST_NAME, detail)


# --- all of them -----------------------------------------------------------------------


def run_checks(nft: str) -> tuple[Result, ...]:
    nft_result = check_nft(probe_nft(nft))
    cap_result = check_net_admin(effective_capabilities())
    table = table_name()
    if not nft_result.ok:
        probe = not_probed(table, "nft does not run")
    elif not cap_result.ok:
        probe = not_probed(table, "CAP_NET_ADMIN is missing")
    else:
        probe = probe_redirect(nft)
    return (nft_result, cap_result, check_redirect(probe), check_original_dst(probe))
