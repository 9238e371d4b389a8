"""The labels of a pod's namespace, for the webhook: an AdmissionRequest names the
namespace only, and its Pod Security level is a label (pod_security.py).

Each namespace is read with a GET (RBAC: `get namespaces`, nothing listed or watched)
at most once every few seconds: a ReplicaSet scaling up asks about many pods of one
namespace at once, and a label changed to let injection in takes effect that soon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from meshlet.controlplane.sources.kube_client import read_or_none
from meshlet.controlplane.sources.kubernetes import describe_failure

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0
# The API server waits for the webhook (the chart's timeoutSeconds: 10): a read must end
# well before.
READ_TIMEOUT = (2.0, 3.0)
_MAX_ENTRIES = 4096

RBAC_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
)

Read = Callable[[str], Mapping[str, str]]


@dataclass(frozen=True)
class Found:
    labels: Mapping[str, str] | None  # None: could not be read
    problem: str = ""  # why not
    at: float = 0.0


class NamespaceLabels:
    """Namespaces' labels through `read` (blocking: run in a thread), each kept
    `CACHE_SECONDS`; concurrent asks for one namespace share one read."""

    def __init__(
        self,
        read: Read,
        server: str = "the API server",
        clock: Callable[[], float] = time.monotonic,
        ttl: float = CACHE_SECONDS,
    ) -> None:
        self._read, self._server, self._clock, self._ttl = read, server, clock, ttl
        self._found: dict[str, Found] = {}
        self._reading: dict[str, asyncio.Task[Found]] = {}
        self._problem = ""

    async def get(self, name: str) -> Found:
        now = self._clock()
        found = self._found.get(name)
        if found is not None and now - found.at < self._ttl:
            return found
        task = self._reading.get(name)
        if task is None:
            task = asyncio.create_task(self._fetch(name, now))
            self._reading[name] = task
            task.add_done_callback(lambda _: self._reading.pop(name, None))
        return await asyncio.shield(task)

    async def _fetch(self, name: str, now: float) -> Found:
        try:
            found = Found(dict(await asyncio.to_thread(self._read, name)), at=now)
        except Exception as exc:  # any failure: the labels last read, else unchecked
            last = self._found.get(name)
            labels = last.labels if last is not None else None
            found = Found(labels, describe_failure(exc, self._server), at=now)
        if found.problem != self._problem:
            if found.problem:
                log.warning("webhook: cannot read namespace %s: %s", name, found.problem)
            self._problem = found.problem
        if len(self._found) >= _MAX_ENTRIES:
            self._found = {k: v for k, v in self._found.items() if now - v.at < self._ttl}
        self._found[name] = found
        return found


def api_reader(api: k8s.ApiClient) -> Read:
    """GET the namespace from the API server; a namespace that is not there has no labels
    (the API server refuses its pods anyway)."""
    core = k8s.CoreV1Api(api)

    def read(name: str) -> Mapping[str, str]:
        found = read_or_none(
            lambda: core.read_namespace(name, _preload_content=False, _request_timeout=READ_TIMEOUT)
        )
        labels = ((found or {}).get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    return read
