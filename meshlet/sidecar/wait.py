"""`meshlet wait`: hold the app until the sidecar is ready.

Run as the sidecar container's postStart hook (native or classic): the kubelet starts
the next container only once it returns, as Istio's holdApplicationUntilProxyStarts.
It polls loopback often: each poll is a local connect, and the app waits on it.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request


def wait_ready(url: str, timeout: float, interval: float = 0.05) -> int:
    deadline = time.monotonic() + timeout
    last = "nothing answered"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return 0
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() >= deadline:
            print(f"meshlet wait: {url} not ready after {timeout:g}s ({last})", file=sys.stderr)
            return 1
        time.sleep(interval)
