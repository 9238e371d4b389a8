"""What injection costs a pod on a real node: time to Ready, and the sidecar's memory
and CPU next to the app's, in one run.

    python bench/pod_start.py [--pods 20] [--load-seconds 15]

Starts the real node (tests/k8s/node.py: kubelet, containerd, CNI, kube-proxy,
CoreDNS) and installs the chart as the docs say. Then, one pod at a time, creates
`--pods` pods of the test app in a namespace without injection and as many in an
injected one, and times each from the create call to the watch event that shows it
Ready. Then, with the demo's `web` (3 replicas) and a client in each namespace, reads
each container's cgroup as the kubelet counts it (working set: memory usage less the
inactive file pages; CPU: cpuacct.usage) at idle and while the client makes new
connections to `web` at 40 a second. Goals: injection adds at most 1 s
to a pod's start at the median; an idle sidecar under 60 MB.

Needs root and the node's binaries (`python tests/k8s/build.py --layer kube --layer
pods`).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from kubernetes import watch  # noqa: E402

from meshlet.inject.pod import INIT_NAME, PROXY_NAME  # noqa: E402
from tests import pods  # noqa: E402
from tests.k8s import build  # noqa: E402
from tests.k8s.node import Node, is_ready, running_node  # noqa: E402
from tests.k8s.node import missing as node_missing  # noqa: E402
from tests.k8s.node_host import CGROUPS  # noqa: E402

Template = Callable[[str], dict[str, Any]]

GOAL_START_S = 1.0
GOAL_IDLE_MB = 60


def test_pod(name: str) -> dict[str, Any]:
    return pods.one_shot_pod(name, ["serve", "--port=8080"])


def time_to_ready(node: Node, namespace: str, name: str, template: Template = test_pod) -> float:
    """Seconds from the create call to the watch event that shows the pod Ready."""
    stream = watch.Watch()
    started = time.monotonic()
    pods.apply(node, namespace, template(name))
    try:
        for event in stream.stream(
            node.cluster.core.list_namespaced_pod,
            namespace,
            field_selector=f"metadata.name={name}",
            timeout_seconds=120,
        ):
            if is_ready(event["object"]):
                return time.monotonic() - started
    finally:
        stream.stop()
    raise RuntimeError(f"pod {namespace}/{name} not Ready in 120 s")


def starts(
    node: Node, namespace: str, count: int, template: Template = test_pod, prefix: str = "start"
) -> list[float]:
    """Each pod's seconds to Ready, one at a time; each deleted (not waited for) when
    Ready, so the names of another series (`prefix`) must differ."""
    found = []
    for i in range(count):
        found.append(time_to_ready(node, namespace, f"{prefix}-{i}", template))
        node.kubectl("delete", "pod", "-n", namespace, f"{prefix}-{i}", "--wait=false")
    return found


def sidecar_only(node: Node, namespace: str, name: str) -> Template:
    """The injected pod `name` as the webhook made it, less `meshlet-init`: what a pod
    would be if a CNI plugin wrote its capture rules (it has none: timing only)."""
    found = node.cluster.core.api_client.sanitize_for_serialization(pods.pod(node, namespace, name))
    spec = {k: v for k, v in found["spec"].items() if k != "nodeName"}
    spec["initContainers"] = [c for c in spec["initContainers"] if c["name"] != INIT_NAME]

    def template(pod_name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name}, "spec": spec}

    return template


def timeline(
    node: Node, namespace: str, name: str, created: datetime.datetime
) -> list[tuple[str, float]]:
    """Where an injected pod's start goes: seconds from its create call to each step, from
    the containers' own log lines (the kubelet's log files, stamped by the runtime)."""
    found = pods.pod(node, namespace, name)
    steps = [
        ("meshlet-init wrote its table", INIT_NAME, "installed"),
        ("sidecar's first line", PROXY_NAME, ""),
        ("sidecar's first config accepted", PROXY_NAME, "first xDS config accepted"),
    ]
    out = []
    for label, container, text in steps:
        at = pods.first_log_at(node, found, container, text)
        if at is not None:
            out.append((label, (at - created).total_seconds()))
    return out


def cgroup(node: Node, container_id: str, controller: str) -> Path:
    (found,) = list((CGROUPS / controller / node.cgroup_root).glob(f"**/{container_id}"))
    return found


def working_set_mb(node: Node, container_id: str) -> float:
    folder = cgroup(node, container_id, "memory")
    usage = int((folder / "memory.usage_in_bytes").read_text())
    stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
    return max(0, usage - int(stat["total_inactive_file"])) / 2**20


def cpu_seconds(node: Node, container_id: str) -> float:
    return int((cgroup(node, container_id, "cpuacct") / "cpuacct.usage").read_text()) / 1e9


def container_ids(node: Node, namespace: str, pod: str) -> dict[str, str]:
    found = pods.pod(node, namespace, pod)
    every = [*(found.status.init_container_statuses or ()), *found.status.container_statuses]
    return {s.name: s.container_id.split("//", 1)[1] for s in every if s.container_id}


def usage(node: Node, targets: dict[str, str], seconds: float) -> dict[str, tuple[float, float]]:
    """Each container's working set (MB, at the end) and CPU (% of a core over the window)."""
    before = {name: cpu_seconds(node, cid) for name, cid in targets.items()}
    time.sleep(seconds)
    return {
        name: (working_set_mb(node, cid), 100 * (cpu_seconds(node, cid) - before[name]) / seconds)
        for name, cid in targets.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--load-seconds", type=float, default=15)
    parser.add_argument("--idle-seconds", type=float, default=10)
    args = parser.parse_args()
    why = node_missing()
    binaries = build.binaries(("kube", "pods"))
    if why or isinstance(binaries, str):
        print(f"cannot run: {why or binaries}")
        return 1
    with (
        tempfile.TemporaryDirectory(prefix="meshlet-bench-pods-") as tmp,
        running_node(binaries) as node,
    ):
        home = Path(tmp)
        with (
            pods.installed_chart(node, home),
            pods.fresh_namespace(node, "plain", injected=False) as plain,
            pods.fresh_namespace(node, "meshed") as meshed,
        ):
            # One pod first in each, so image and page caches are warm for both; the
            # injected one stays as the sidecar-alone pods' model.
            time_to_ready(node, plain, "start-warm")
            time_to_ready(node, meshed, "start-warm")
            without = starts(node, plain, args.pods)
            with_sidecar = starts(node, meshed, args.pods)
            # Its pods go in the uninjected namespace, so the webhook leaves them as they are.
            alone = sidecar_only(node, meshed, "start-warm")
            floor = starts(node, plain, args.pods, alone, prefix="alone")
            print(f"pod creation to Ready over {args.pods} pods (s)        median      max")
            for label, values in (
                ("without injection", without),
                ("injected", with_sidecar),
                ("the sidecar alone, no meshlet-init", floor),
            ):
                print(f"{label:<47}{statistics.median(values):>7.2f}{max(values):>9.2f}")
            added = statistics.median(with_sidecar) - statistics.median(without)
            verdict = "PASS" if added <= GOAL_START_S else "MISS"
            goal = f"injection adds at most {GOAL_START_S:.0f} s at the median"
            print(f"goal: {goal}: +{added:.2f} s: {verdict}")
            floor_added = statistics.median(floor) - statistics.median(without)
            print(f"the sidecar alone (what a CNI plugin would leave): +{floor_added:.2f} s")
            created = datetime.datetime.now(datetime.UTC)
            ready_after = time_to_ready(node, meshed, "timeline")
            print("one injected pod, seconds from the create call")
            for label, seconds in timeline(node, meshed, "timeline", created):
                print(f"  {label:<40}{seconds:>6.2f}")
            print(f"  {'Ready (seen by a watch)':<40}{ready_after:>6.2f}")

            for namespace in (plain, meshed):
                pods.apply(
                    node,
                    namespace,
                    *pods.demo(),
                    pods.one_shot_pod("client", ["serve", "--port=8081"]),
                )
            for namespace in (plain, meshed):
                node.wait_ready(namespace, "app=web", 3)
            time.sleep(5)
            rows: list[
                tuple[str, dict[str, tuple[float, float]], dict[str, tuple[float, float]]]
            ] = []
            for namespace in (plain, meshed):
                web = pods.pods(node, namespace, "app=web")[0].metadata.name
                targets = {}
                for pod in ("client", web):
                    for container, cid in container_ids(node, namespace, pod).items():
                        if container != INIT_NAME:
                            role = "app" if container != PROXY_NAME else "sidecar"
                            targets[
                                f"{namespace} {'client' if pod == 'client' else 'web'} {role}"
                            ] = cid
                idle = usage(node, targets, args.idle_seconds)
                app = ["python3", "/app/app.py", "load", "http://web/", "--rate=40"]
                app.append(f"--duration={args.load_seconds + 3}")
                argv = node.cluster.kubectl_argv("exec", "-n", namespace, "client", "--", *app)
                with subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
                ) as load:
                    time.sleep(2)
                    busy = usage(node, targets, args.load_seconds)
                    out, _ = load.communicate(timeout=60)
                final = pods.json_lines(out)[-1] if pods.json_lines(out) else {}
                print(f"{namespace}: load {final.get('ok', 0)} ok, {final.get('failed', 0)} failed")
                rows.append((namespace, idle, busy))
            print(
                f"{'container':<28}{'idle MB':>9}{'idle CPU%':>11}{'load MB':>9}{'load CPU%':>11}"
            )
            for _, idle, busy in rows:
                for name in idle:
                    print(
                        f"{name:<28}{idle[name][0]:>9.1f}{idle[name][1]:>11.2f}{busy[name][0]:>9.1f}{busy[name][1]:>11.2f}"
                    )
            meshed_idle = rows[1][1]
            sidecars = [mb for name, (mb, _) in meshed_idle.items() if name.endswith("sidecar")]
            verdict = "PASS" if max(sidecars) < GOAL_IDLE_MB else "MISS"
            print(
                f"goal: an idle sidecar under {GOAL_IDLE_MB} MB: {max(sidecars):.1f} MB: {verdict}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
