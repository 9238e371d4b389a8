"""scripts/dev-loop.sh, the Tilt dev image's entrypoint: SIGHUP (sent by live update
after it synced code) runs the command again; SIGTERM ends both; a command that
exits by itself ends the loop with its status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent
LOOP = ROOT / "scripts" / "dev-loop.sh"
# Appends its PID to a file, then waits to be ended.
CHILD = "import os, sys, time; open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); time.sleep(600)"


def starts(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sighup_runs_it_again_and_sigterm_ends_both(tmp_path: Path) -> None:
    record = tmp_path / "starts"
    loop = subprocess.Popen(["sh", str(LOOP), sys.executable, "-c", CHILD, str(record)])
    try:
        (first,) = wait_until(
            lambda s: len(s) == 1, 10, "a first start", observe=lambda: starts(record)
        )
        loop.send_signal(signal.SIGHUP)
        second = wait_until(
            lambda s: len(s) == 2, 10, "a second start", observe=lambda: starts(record)
        )[1]
        assert second != first and not alive(first) and alive(second)
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(10) == 143
        wait_until(lambda gone: gone, 10, "the command ended", observe=lambda: not alive(second))
    finally:
        stop_process(loop)


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (the shell ran its trap)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def running_child(loop: subprocess.Popen[bytes], record: Path) -> int | None:
    """The last recorded start, if it is alive and the loop's own child."""
    pids = starts(record)
    if not pids or not alive(pids[-1]):
        return None
    status = Path(f"/proc/{pids[-1]}/status").read_text()
    return pids[-1] if f"\nPPid:\t{loop.pid}\n" in status else None


def hup_as_early_as_it_can_be_caught(folder: Path) -> None:
    record, said = folder / "starts", folder / "stderr"
    with said.open("wb") as stderr:
        loop = subprocess.Popen(
            ["sh", str(LOOP), sys.executable, "-c", CHILD, str(record)], stderr=stderr
        )
    try:
        # Polled without a pause: the trap is set a moment before the first fork.
        deadline = time.monotonic() + 10
        while not catches(loop.pid, signal.SIGHUP):
            assert time.monotonic() < deadline, "the loop never set its HUP trap"
        loop.send_signal(signal.SIGHUP)
        # A child started after the HUP runs, and the loop says it started it again.
        child = wait_until(
            lambda pid: pid is not None and b"starting" in said.read_bytes(),
            10,
            "a start after the early SIGHUP",
            observe=lambda: running_child(loop, record),
        )
        assert said.read_bytes().count(b"dev-loop: code changed, starting") == 1
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(10) == 143
        wait_until(lambda gone: gone, 10, "the command ended", observe=lambda: not alive(child))
    finally:
        stop_process(loop)


@pytest.mark.timeout(300)
def test_a_sighup_as_early_as_it_can_be_caught_is_never_lost(tmp_path: Path) -> None:
    # Sent the moment the shell's trap is set, it lands before the first child can be
    # ended (before the fork, between `... &` and `child=$!`, or while the forked child
    # still runs the shell's traps) as often as not: the old loop lost it every run here.
    for round in range(20):
        folder = tmp_path / str(round)
        folder.mkdir()
        hup_as_early_as_it_can_be_caught(folder)


def test_a_command_that_exits_ends_the_loop_with_its_status() -> None:
    result = subprocess.run(["sh", str(LOOP), "sh", "-c", "exit 3"], timeout=10)
    assert result.returncode == 3
