"""py-spy on a meshlet process for one phase of a benchmark: collapsed stacks, summarized.

Optional: without py-spy (pip install py-spy) nothing is recorded.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time


class Profiler:
    """py-spy on one process for one phase; writes collapsed stacks."""

    def __init__(self, folder: str | None, pid: int) -> None:
        self.folder = folder
        self.pid = pid
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = ""
        self.exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")

    def start(self, name: str) -> None:
        if not self.folder or not os.path.exists(self.exe):
            return
        self.path = os.path.join(self.folder, f"{name}.txt")
        self.proc = subprocess.Popen(
            [
                self.exe,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                self.path,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach

    def stop(self) -> str | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return self.path if os.path.exists(self.path) else None


def summarize_profile(path: str, top: int = 12) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_short_frame(fr) for fr in stack.split(";")]
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; self time:"]
    lines += [f"    {100 * n / total:5.1f}%  {fr}" for fr, n in own.most_common(top)]
    lines.append("  inclusive time (meshlet frames below the event loop):")
    ours = [
        (fr, n)
        for fr, n in inclusive.most_common()
        if n < total and "(meshlet/" in fr and not fr.endswith(_ENTRY_FRAMES)
    ]
    lines += [f"    {100 * n / total:5.1f}%  {fr}" for fr, n in ours[:top]]
    return lines


_ENTRY_FRAMES = (
    "(meshlet/__main__.py)",
    "(meshlet/cli.py)",
    "run (meshlet/controlplane/app.py)",
    "run (meshlet/sidecar/app.py)",
)


def _short_frame(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)", meshlet's files with their package
    m = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    if not path.startswith("meshlet/"):
        path = os.path.basename(path)
    return f"{func} ({path})"
