"""What the kubelets of a real cluster would report, for a cluster that has none.

Watches every pod; binds each unscheduled one to a Node (through `pods/binding`,
as the scheduler does); reports a bound one Running and Ready with an IP (the
node's pod range, or one the test chooses); and finishes a deleted one (deletes
it with grace 0, as a kubelet does once the containers stopped) unless it
carries the hold annotation, so tests can watch it terminate.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes import client as k8s

from tests.k8s.cluster import NODES, ZONE_LABEL, Cluster

log = logging.getLogger(__name__)

# A pod with this annotation set to "true" stays terminating until `finish()`.
HOLD_TERMINATION = "test.meshlet.dev/hold-termination"
POD_CIDR = ipaddress.ip_network("10.244.0.0/16")

Pod = Mapping[str, Any]


class Kubelet:
    def __init__(self, cluster: Cluster) -> None:
        self._core = k8s.CoreV1Api(cluster.api)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-kubelet", daemon=True)
        self._lock = threading.Lock()
        self._reported: dict[str, bool] = {}  # pod uid -> the Ready we reported
        self._ready_override: dict[tuple[str, str], bool] = {}
        self._next_ip: dict[str, int] = {}
        self._ips: dict[str, str] = {}  # pod uid -> its IP
        # The last resourceVersion handled ("" = list next): a broken watch resumes there.
        self._version = ""
        self._next_node = 0
        self._response: Any = None
        # Tests may choose a pod's IP; None means the node's pod range.
        self.ip_for: Callable[[Pod], str | None] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._response is not None:
                with contextlib.suppress(Exception):
                    self._response.shutdown()
        self._thread.join(timeout=10)

    # --- what tests ask for ---------------------------------------------------

    def set_ready(self, namespace: str, name: str, ready: bool) -> None:
        """The pod's readiness probe starts passing or failing."""
        with self._lock:
            self._ready_override[namespace, name] = ready
        pod = self._read(namespace, name)
        self._report(pod, ready)

    def finish(self, namespace: str, name: str) -> None:
        """A terminating pod's containers have stopped: the pod goes away."""
        with contextlib.suppress(k8s.ApiException):
            self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    # --- the loop -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._version:
                    self._list()
                self._watch()
                continue
            except k8s.ApiException as exc:
                if exc.status == 410:
                    self._version = ""
            except Exception as exc:  # the API server stopped by a test, say
                if not self._stop.is_set():
                    log.debug("test kubelet: %s; retrying", exc)
            self._stop.wait(0.5)

    def _list(self) -> None:
        response = self._core.list_pod_for_all_namespaces(_preload_content=False)
        body = json.loads(response.data)
        for pod in body["items"]:
            self._handle(pod)
        self._version = str(body["metadata"]["resourceVersion"])

    def _watch(self) -> None:
        response = self._core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=self._version,
            allow_watch_bookmarks=True,
            timeout_seconds=60,
            _preload_content=False,
            _request_timeout=(5, 90),
        )
        with self._lock:
            self._response = response
        try:
            for event in _lines(response):
                if self._stop.is_set():
                    break
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        self._version = ""
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                if kind in ("ADDED", "MODIFIED"):
                    self._handle(obj)
                self._version = obj["metadata"]["resourceVersion"]
        finally:
            with self._lock:
                self._response = None
            response.release_conn()

    def _handle(self, pod: Pod) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        try:
            if meta.get("deletionTimestamp"):
                if meta.get("annotations", {}).get(HOLD_TERMINATION) != "true":
                    self.finish(meta["namespace"], meta["name"])
                return
            if not spec.get("nodeName"):
                self._bind(pod)
                return
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return
            with self._lock:
                ready = self._ready_override.get((meta["namespace"], meta["name"]), True)
                reported = self._reported.get(meta["uid"])
            if reported != ready:
                self._report(pod, ready)
        except k8s.ApiException as exc:
            # Gone or changed meanwhile: the next event for it brings the news.
            if exc.status not in (404, 409):
                raise

    def _bind(self, pod: Pod) -> None:
        meta = pod["metadata"]
        node = self._choose_node(pod)
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        self._core.create_namespaced_pod_binding(
            meta["name"], meta["namespace"], binding, _preload_content=False
        )

    def _choose_node(self, pod: Pod) -> str:
        selector = pod.get("spec", {}).get("nodeSelector") or {}
        candidates = [
            name
            for name, zone in NODES
            if selector.get("kubernetes.io/hostname", name) == name
            and selector.get(ZONE_LABEL, zone) == zone
        ] or [name for name, _ in NODES]
        with self._lock:
            self._next_node += 1
            return candidates[self._next_node % len(candidates)]

    def _report(self, pod: Pod, ready: bool) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        status = pod.get("status", {})
        ip = status.get("podIP") or self._pod_ip(pod)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        flag = "True" if ready else "False"
        conditions = [
            ("PodReadyToStartContainers", "True"),
            ("Initialized", "True"),
            ("ContainersReady", flag),
            ("Ready", flag),
            ("PodScheduled", "True"),
        ]
        patch = {
            "status": {
                "phase": "Running",
                "hostIP": _node_ip(spec["nodeName"]),
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": status.get("startTime") or now,
                "conditions": [
                    {"type": kind, "status": value, "lastTransitionTime": now}
                    for kind, value in conditions
                ],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "imageID": "",
                        "ready": ready,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                    for container in spec.get("containers", [])
                ],
            }
        }
        self._core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], patch, _preload_content=False
        )
        with self._lock:
            self._reported[meta["uid"]] = ready

    def _pod_ip(self, pod: Pod) -> str:
        """The pod's IP, chosen once (the test's thread and the watch may both report it)."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid in self._ips:
                return self._ips[uid]
        chosen = self.ip_for(pod) if self.ip_for is not None else None
        node = pod["spec"]["nodeName"]
        index = [name for name, _ in NODES].index(node) if node in dict(NODES) else 0
        with self._lock:
            if not chosen:
                self._next_ip[node] = self._next_ip.get(node, 1) + 1
                # A /20 per node, as a node's podCIDR.
                chosen = str(POD_CIDR.network_address + (index * 16 << 8) + self._next_ip[node])
            return self._ips.setdefault(uid, chosen)

    def _read(self, namespace: str, name: str) -> Pod:
        response = self._core.read_namespaced_pod(name, namespace, _preload_content=False)
        pod: Pod = json.loads(response.data)
        return pod


def _node_ip(node: str) -> str:
    names = [name for name, _ in NODES]
    return f"10.240.0.{names.index(node) + 1}" if node in names else "10.240.0.1"


def _lines(response: Any) -> Iterator[dict[str, Any]]:
    buffer = b""
    for chunk in response.stream(65536, decode_content=False):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
