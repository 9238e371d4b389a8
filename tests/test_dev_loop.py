"""scripts/dev-loop.sh, the Tilt dev image's entrypoint: SIGHUP (sent by live update
after it synced code) runs the command again; SIGTERM ends both; a command that
exits by itself ends the loop with its status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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


def test_a_command_that_exits_ends_the_loop_with_its_status() -> None:
    result = subprocess.run(["sh", str(LOOP), "sh", "-c", "exit 3"], timeout=10)
    assert result.returncode == 3
