"""meshlet the three ways it is used, in real pods on a real node (tests/k8s/node.py):
the chart's control plane as a Pod behind its probes and Service, the webhook called
through that Service, injected pods whose native sidecar starts first, whose app's
first lookup and connection succeed, whose probes pass, and whose traffic spreads,
keeps flowing through a rolling update and a scale-down, through the control plane's
absence and a sidecar's restart; Jobs that complete; `helm upgrade` and `helm
uninstall` with pods running.

The tests run in file order on one release and one injected namespace (the demo's
`web` and `api`): each journey takes the state the last left, as a cluster's user
would. Needs root and the node's binaries (tests/k8s/build.py --layer pods).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlet import __version__, defaults
from meshlet.inject.pod import INIT_NAME, PROXY_NAME, START_TIMEOUT_S, STATUS
from tests import images, pods
from tests.helm_chart import helm
from tests.k8s import build, node_images
from tests.k8s.node import DNS_IP, HOST_IP, Node
from tests.k8s.prometheus import running_prometheus
from tests.otlp_receiver import otlp_env, receiving
from tests.procs import wait_until
from tests.test_dashboards import ALERTS, dashboard_queries

# The first test also waits for the node, whose first start builds its images.
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "meshlet-demo"
CP_SELECTOR = pods.CONTROL_PLANE_SELECTOR


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="module")
def mesh(node: Node, helm_home: Path) -> Iterator[str]:
    """The chart installed as the docs say, and the demo in an injected namespace."""
    with pods.installed_chart(node, helm_home), pods.fresh_namespace(node, NAMESPACE) as name:
        pods.apply(node, name, *pods.demo(), client_pod("client"), client_pod("bare", False))
        node.wait_ready(name, "app=web", 3)
        node.wait_ready(name, "app=api", 1)
        node.wait_ready(name, "app=client", 2)
        yield name


def client_pod(name: str, injected: bool = True) -> dict[str, Any]:
    """A pod to run the app's client in (`kubectl exec`); `bare` opts out of injection."""
    labels = {"app": "client", **({} if injected else {"meshlet.io/inject": "false"})}
    found = pods.one_shot_pod(name, ["serve", "--port=8081"], labels=labels)
    found["spec"]["restartPolicy"] = "Always"
    return found


def exec_app(
    node: Node, pod: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return node.kubectl(
        "exec",
        "-n",
        NAMESPACE,
        pod,
        "-c",
        "app",
        "--",
        "python3",
        "/app/app.py",
        *args,
        check=False,
        timeout=timeout,
    )


def get_ok(node: Node, pod: str, url: str) -> str:
    result = exec_app(node, pod, "get", url)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return str(pods.json_lines(result.stdout)[-1]["answer"])


def web_pods(node: Node) -> set[str]:
    return {p.metadata.name for p in pods.pods(node, NAMESPACE, "app=web")}


# --- 1. the chart: a Pod behind its probes, the webhook through its Service ------------


def test_the_control_plane_runs_as_a_pod_and_injects_through_its_service(
    node: Node, mesh: str
) -> None:
    (plane,) = pods.pods(node, pods.SYSTEM, CP_SELECTOR)
    container = plane.spec.containers[0]
    assert container.readiness_probe.http_get.path == "/readyz"
    assert pods.status_of(plane, container.name).ready
    hook = node.kubectl(
        "get",
        "mutatingwebhookconfiguration",
        "meshlet-injector",
        "-o",
        "jsonpath={.webhooks[0].clientConfig}",
    ).stdout
    assert '"service"' in hook and '"url"' not in hook, hook
    for found in pods.pods(node, mesh, "app=web"):
        init, main = pods.container_names(found)
        assert init == [INIT_NAME, PROXY_NAME], init  # native sidecar, after the capture
        assert main == ["web"]
        assert found.spec.init_containers[1].restart_policy == "Always"
    (bare,) = [p for p in pods.pods(node, mesh, "app=client") if p.metadata.name == "bare"]
    assert not pods.injected(bare)


# --- 2. an injected pod: ordering, first lookup, probes, resolv.conf, spreading ----------


def test_the_apps_very_first_lookup_and_connection_succeed(node: Node, mesh: str) -> None:
    pods.apply(node, mesh, pods.one_shot_pod("first", ["get", "http://web/", "--tries=1"]))
    found = pods.wait_phase(node, mesh, "first", ("Succeeded", "Failed"))
    output = pods.logs(node, mesh, "first")
    assert found.status.phase == "Succeeded", output
    (answer,) = pods.json_lines(output)
    assert answer["attempt"] == 1 and answer["answer"] in web_pods(node), answer
    # The app's first try above is the proof that the kubelet started it only once the
    # sidecar was ready; and the sidecar stopped only after the app had ended.
    app_done = pods.log_lines(node, found, "app")[-1][0]
    stopping = pods.first_log_at(node, found, PROXY_NAME, "stopping (SIGTERM)")
    assert stopping is not None and stopping > app_done, (stopping, app_done)


def test_probes_resolv_conf_and_capture_are_the_kubelets_and_the_sidecars(
    node: Node, mesh: str
) -> None:
    client = pods.pod(node, mesh, "client")
    sidecar = next(c for c in client.spec.init_containers if c.name == PROXY_NAME)
    assert sidecar.readiness_probe.http_get.port == defaults.HEALTH_PORT
    assert pods.status_of(client, PROXY_NAME).ready
    resolv = node.kubectl(
        "exec", "-n", mesh, "client", "-c", "app", "--", "cat", "/etc/resolv.conf"
    ).stdout
    assert f"nameserver {DNS_IP}" in resolv
    assert f"search {mesh}.svc.{defaults.CLUSTER_DOMAIN}" in resolv
    before = pods.metrics(client.status.pod_ip)
    for name in ("web", f"web.{mesh}", f"api.{mesh}.svc:8080"):
        assert get_ok(node, "client", f"http://{name}/")
    after = pods.metrics(client.status.pod_ip)
    # The kubelet's resolv.conf names the cluster DNS; capture brought the queries to
    # the sidecar, which answered them itself, and its proxy carried the connections.
    assert pods.sample(after, "meshlet_dns_queries_total") > pods.sample(
        before, "meshlet_dns_queries_total"
    )
    assert (
        pods.sample(after, "meshlet_proxy_connections_total")
        >= pods.sample(before, "meshlet_proxy_connections_total") + 3
    )


def test_requests_spread_over_every_replica(node: Node, mesh: str) -> None:
    result = exec_app(node, "client", "load", "http://web/", "--rate=30", "--duration=5")
    final = pods.json_lines(result.stdout)[-1]
    assert final["failed"] == 0, final
    assert set(final["by_pod"]) == web_pods(node), final
    assert min(final["by_pod"].values()) >= final["ok"] / 10, final


def test_one_keep_alive_connections_requests_reach_every_replica_and_a_scaled_up_one(
    node: Node, mesh: str
) -> None:
    """web's port is HTTP: the sidecar balances each request, so the requests of one
    client connection spread over the replicas, and reach a new one once it is in the
    load assignment (counted, never timed)."""
    app = ["python3", "/app/app.py", "calls", "http://web/"]
    argv = node.cluster.kubectl_argv("exec", "-i", "-n", mesh, "client", "-c", "app", "--", *app)
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as run:
        assert run.stdin is not None and run.stdout is not None
        into, out = run.stdin, run.stdout

        def batch(count: int) -> dict[str, Any]:
            into.write(f"{count}\n")
            into.flush()
            line = out.readline()
            assert line, "the client's calls ended"
            result: dict[str, Any] = json.loads(line)
            assert result["failed"] == 0, result
            return result

        try:
            first = batch(60)
            assert set(first["by_pod"]) == web_pods(node), first
            node.kubectl("scale", "-n", mesh, "deployment/web", "--replicas=4")
            node.wait_ready(mesh, "app=web", 4)
            wait_until(
                lambda seen: set(seen) == web_pods(node),
                60,
                "the new replica to answer requests of the same client connection",
                observe=lambda: batch(40)["by_pod"],
            )
            assert batch(1)["connections"] == 1, "one client connection all along"
        finally:
            into.close()
            run.wait(timeout=30)
            node.kubectl("scale", "-n", mesh, "deployment/web", "--replicas=3")

    def left() -> int:
        return len(pods.every_pod(node, mesh, "app=web"))

    wait_until(lambda n: n == 3, 90, "three web pods again", observe=left, interval=0.5)
    node.wait_ready(mesh, "app=web", 3)


def test_a_sidecar_in_a_pod_exports_its_metrics_over_otlp_from_the_shipped_image(
    node: Node, mesh: str
) -> None:
    # The receiver listens on the host's end of the node's link, which pods reach.
    with receiving(HOST_IP) as (receiver, port):
        exporter = pods.one_shot_pod("otlp", [], labels={"meshlet.io/inject": "false"})
        container = exporter["spec"]["containers"][0]
        container["image"] = node_images.SIDECAR
        container["args"] = ["sidecar", f"--xds-address=meshlet.{pods.SYSTEM}.svc:15010"]
        container["env"] = [{"name": k, "value": v} for k, v in otlp_env(port, HOST_IP).items()]
        pods.apply(node, mesh, exporter)
        try:
            wait_until(
                lambda names: "meshlet_build_info" in names or "meshlet.build.info" in names,
                90,
                "the pod's sidecar to export over OTLP",
                observe=receiver.names,
                interval=0.5,
            )
        finally:
            node.kubectl("delete", "pod", "-n", mesh, "otlp", "--wait=false")


# --- 3. pods coming and going under load ---------------------------------------------


@contextlib.contextmanager
def load_from(node: Node, pod: str) -> Iterator[list[dict[str, Any]]]:
    """The app's load (a new connection per request) from `pod` while the block runs;
    its per-second lines are in the list when the block ends (the load stops when
    kubectl's stdin closes: a signal to kubectl would not reach it)."""
    app = ["python3", "/app/app.py", "load", "http://web/", "--rate=20", "--until-eof"]
    argv = node.cluster.kubectl_argv("exec", "-i", "-n", NAMESPACE, pod, "-c", "app", "--", *app)
    lines: list[dict[str, Any]] = []
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as load:
        assert load.stdin is not None and load.stdout is not None
        try:
            lines.extend(pods.json_lines(load.stdout.readline()))
            yield lines
            time.sleep(3)  # what is in flight lands
        finally:
            try:
                out, _ = load.communicate(input="", timeout=30)  # stdin closed: the load ends
            except subprocess.TimeoutExpired:
                load.kill()
                out, _ = load.communicate()
            lines.extend(pods.json_lines(out))
    final = lines[-1] if lines else {}
    assert final.get("final"), f"the load from {pod} did not end with its totals: {lines[-3:]}"


def test_a_rolling_update_and_a_scale_down_fail_no_request_through_the_sidecar(
    node: Node, mesh: str
) -> None:
    try:
        with load_from(node, "client") as meshed, load_from(node, "bare") as bare:
            node.kubectl("rollout", "restart", "-n", mesh, "deployment/web")
            node.kubectl(
                "rollout", "status", "-n", mesh, "deployment/web", "--timeout=180s", timeout=200
            )
            node.kubectl("scale", "-n", mesh, "deployment/web", "--replicas=1")

            def left() -> int:
                return len(pods.every_pod(node, mesh, "app=web"))

            # Until the old pods have finished their requests and gone.
            wait_until(lambda n: n == 1, 90, "one web pod left", observe=left, interval=0.5)
    finally:
        node.kubectl("scale", "-n", mesh, "deployment/web", "--replicas=3")
    last, last_bare = meshed[-1], bare[-1]
    print(f"through the sidecar: {last}\nkube-proxy alone (same backends, same run): {last_bare}")
    assert last["ok"] > 200, last
    if last["failed"]:
        said = pods.logs(node, mesh, "client", PROXY_NAME).splitlines()
        noted = "\n".join(line for line in said if " INFO " not in line)
        client_ip = pods.pod(node, mesh, "client").status.pod_ip
        counted = "\n".join(
            line
            for line in pods.metrics(client_ip).splitlines()
            if line.startswith(("meshlet_proxy_connect_failures", "meshlet_proxy_re"))
        )
        raise AssertionError(
            f"{last}\nthe client's sidecar said:\n{noted or '(nothing)'}\nand counted:\n{counted}"
        )
    node.wait_ready(mesh, "app=web", 3)


# --- 4 and 5. Jobs: native sidecars, a CronJob's Job, classic mode -----------------------


def job(name: str, args: list[str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    template = pods.one_shot_pod(name, args, annotations=annotations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 120,
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }


def wait_job(node: Node, name: str) -> Any:
    def state() -> str:
        node.check_alive()
        found = node.kubectl(
            "get",
            "job",
            "-n",
            NAMESPACE,
            name,
            "-o",
            "jsonpath={.status.succeeded}/{.status.failed}",
        ).stdout
        return found

    wait_until(
        lambda s: s in ("1/", "/1", "1/0", "0/1"),
        150,
        f"job {name} to end",
        observe=state,
        interval=1,
    )
    (found,) = pods.pods(node, NAMESPACE, f"job-name={name}")
    return found


def test_a_job_and_a_cronjobs_job_complete_with_the_native_sidecar(node: Node, mesh: str) -> None:
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {"spec": job("x", ["get", "http://api.meshlet-demo:8080/"])["spec"]},
        },
    }
    pods.apply(node, mesh, job("once", ["get", "http://web/"]), cron)
    node.kubectl("create", "job", "-n", mesh, "nightly-now", "--from=cronjob/nightly")
    for name in ("once", "nightly-now"):
        found = wait_job(node, name)
        assert found.status.phase == "Succeeded", pods.logs(node, mesh, found.metadata.name)
        app_done = pods.log_lines(node, found, "app")[-1][0]
        stopping = pods.first_log_at(node, found, PROXY_NAME, "stopping (SIGTERM)")
        assert stopping is not None and stopping > app_done, (name, stopping, app_done)


def test_classic_mode_holds_the_app_and_its_job_ends_by_quitquitquit(node: Node, mesh: str) -> None:
    # The docs' pattern: the main container asks the sidecar to stop when it is done.
    script = (
        "python3 /app/app.py get http://web/ --tries=1 && "
        f"curl -fsS -X POST http://127.0.0.1:{defaults.SIDECAR_ADMIN_PORT}/quitquitquit"
    )
    classic = job("classic", [], annotations={"meshlet.io/sidecar-mode": "classic"})
    app = classic["spec"]["template"]["spec"]["containers"][0]
    app["command"], app["args"] = ["sh", "-c", script], []
    pods.apply(node, mesh, classic)
    found = wait_job(node, "classic")
    output = pods.logs(node, mesh, found.metadata.name)
    assert found.status.phase == "Succeeded", output
    _, main = pods.container_names(found)
    assert main == [PROXY_NAME, "app"], main  # classic: the sidecar first among containers
    assert pods.json_lines(output)[0]["attempt"] == 1, output  # held until the sidecar was ready
    assert pods.status_of(found, PROXY_NAME).state.terminated.exit_code == 0


# --- 6. the control plane gone; a sidecar restarted meanwhile -------------------------


def sidecar_pid(node: Node, found: Any) -> int:
    container = pods.status_of(found, PROXY_NAME).container_id.split("//", 1)[1]
    listed = subprocess.run(
        [*node.ctr, "-n", "k8s.io", "tasks", "ls"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for line in listed.splitlines():
        words = line.split()
        if words and words[0] == container:
            return int(words[1])
    raise AssertionError(f"no task {container} in:\n{listed}")


def test_without_the_control_plane_traffic_goes_on_and_a_restarted_sidecar_serves_its_state(
    node: Node, mesh: str
) -> None:
    node.kubectl("scale", "-n", pods.SYSTEM, "deployment/meshlet", "--replicas=0")
    pods.wait_gone(node, pods.SYSTEM, CP_SELECTOR)
    try:
        assert get_ok(node, "client", "http://web/") in web_pods(node)
        client = pods.pod(node, mesh, "client")
        restarts = pods.status_of(client, PROXY_NAME).restart_count
        os.kill(sidecar_pid(node, client), signal.SIGKILL)

        def restarted() -> Any:
            node.check_alive()
            found = pods.pod(node, mesh, "client")
            status = pods.status_of(found, PROXY_NAME)
            return found if status.restart_count > restarts and status.ready else None

        again = wait_until(
            lambda found: found is not None,
            90,
            "the sidecar restarted and ready",
            observe=restarted,
            interval=0.5,
        )
        assert pods.sample(pods.metrics(again.status.pod_ip), "meshlet_xds_config_stale") == 1
        assert get_ok(node, "client", "http://web/") in web_pods(node)
        assert get_ok(node, "client", "http://api:8080/")
    finally:
        node.kubectl("scale", "-n", pods.SYSTEM, "deployment/meshlet", "--replicas=1")
        node.wait_ready(pods.SYSTEM, CP_SELECTOR, 1)
    wait_until(
        lambda: (
            pods.sample(
                pods.metrics(pods.pod(node, mesh, "client").status.pod_ip),
                "meshlet_xds_config_stale",
            )
            == 0
        ),
        60,
        "the sidecar synced again",
    )


def test_a_pod_deleted_while_its_sidecar_waits_for_config_is_gone_within_the_hooks_limit(
    node: Node, mesh: str
) -> None:
    """The kubelet does not stop a pod whose postStart hook still runs, not even a deleted
    one (kubernetes/kubernetes#116032): `meshlet wait`'s limit is what bounds the delete.
    The pod is the client's injected spec with a control plane nobody answers at."""
    injected = node.cluster.core.api_client.sanitize_for_serialization(
        pods.pod(node, mesh, "client")
    )
    spec = injected["spec"]
    for key in ("nodeName", "hostname", "priority"):  # filled in by the API server
        spec.pop(key, None)
    (sidecar,) = [c for c in spec["initContainers"] if c["name"] == PROXY_NAME]
    for variable in sidecar["env"]:
        if variable["name"] == "MESHLET_XDS_ADDRESS":
            variable["value"] = "127.0.0.1:1"  # refused: no config, and no saved state yet
    stuck = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "stuck",
            "labels": {"app": "stuck"},
            # Injected already: the webhook leaves it as it is.
            "annotations": {STATUS: injected["metadata"]["annotations"][STATUS]},
        },
        "spec": spec,
    }
    pods.apply(node, mesh, stuck)
    try:

        def init_done() -> bool:
            found = pods.pod(node, mesh, "stuck")
            statuses = found.status.init_container_statuses or ()
            return any(s.name == INIT_NAME and s.state.terminated for s in statuses)

        wait_until(init_done, 90, "meshlet-init done: the sidecar started, its hook waiting")
        found = pods.pod(node, mesh, "stuck")
        assert not pods.status_of(found, PROXY_NAME).ready  # held: no config
        node.cluster.core.delete_namespaced_pod("stuck", mesh)
        grace = int(spec.get("terminationGracePeriodSeconds") or 30)
        wait_until(
            lambda: not pods.every_pod(node, mesh, "app=stuck"),
            START_TIMEOUT_S + grace + 30,
            "the deleted pod gone, its hook ended by its own limit",
            interval=0.5,
        )
    finally:
        with contextlib.suppress(Exception):
            node.cluster.core.delete_namespaced_pod("stuck", mesh, grace_period_seconds=0)


# --- 1 again: two replicas, the Lease holder deleted -------------------------------------


def lease_holder(node: Node) -> str:
    """The holding replica's pod (a holder is `<pod name>-<pid>`)."""
    found = node.kubectl(
        "get", "lease", "-n", pods.SYSTEM, "-o", "jsonpath={.items[*].spec.holderIdentity}"
    ).stdout.split()
    return found[0].rsplit("-", 1)[0] if found else ""


def test_with_two_replicas_deleting_the_lease_holder_moves_the_lease_and_injection_goes_on(
    node: Node, mesh: str, helm_home: Path
) -> None:
    pods.upgrade_chart(node, helm_home, "controlPlane.replicas=2")
    node.wait_ready(pods.SYSTEM, CP_SELECTOR, 2)
    holder = wait_until(bool, 60, "a Lease holder", observe=lambda: lease_holder(node))
    node.kubectl("delete", "pod", "-n", pods.SYSTEM, holder, "--wait=false")
    moved = wait_until(
        lambda h: h and h != holder,
        120,
        "the Lease to move",
        observe=lambda: lease_holder(node),
        interval=1,
    )
    assert moved in {p.metadata.name for p in pods.pods(node, pods.SYSTEM, CP_SELECTOR)}
    pods.apply(node, mesh, pods.one_shot_pod("after-failover", ["get", "http://web/"]))
    found = pods.wait_phase(node, mesh, "after-failover", ("Succeeded", "Failed"))
    assert pods.injected(found) and found.status.phase == "Succeeded"


# --- 9. Prometheus: discovery by the chart's annotations, the rules, an alert --------------


def as_promql(query: str) -> str:
    """A dashboard's query as Prometheus runs it: `$job` any job, and Grafana's
    `label_values(metric, label)` the series whose labels it lists."""
    found = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
    return (found.group(1) if found else query).replace("$job", ".+")


def lookup_outside(node: Node) -> None:
    """A name outside the cluster, asked by the client app (it may not resolve)."""
    script = "import socket\ntry: socket.getaddrinfo('example.org', 80)\nexcept OSError: pass"
    node.kubectl(
        "exec", "-n", NAMESPACE, "client", "-c", "app", "--", "python3", "-c", script, timeout=60
    )


def replicas(node: Node) -> str:
    return node.kubectl(
        "get", "deployment", "-n", pods.SYSTEM, "meshlet", "-o", "jsonpath={.spec.replicas}"
    ).stdout


def test_prometheus_scrapes_the_pods_by_their_annotations_and_alerts_on_a_lost_control_plane(
    node: Node, mesh: str, tmp_path: Path
) -> None:
    found = build.binaries(("pods",))
    assert not isinstance(found, str), found
    # promtool: the rules as shipped are valid and do what their unit tests say.
    shutil.copy(ALERTS, tmp_path / "alerts.yaml")
    shutil.copy(ROOT / "tests" / "data" / "prometheus" / "alerts_test.yaml", tmp_path)
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]):
        checked = subprocess.run(
            [str(found["promtool"]), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked

    # Live, with every rule's `for` at 0: the test shows the condition, not the wait.
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    binary, kubeconfig = found["prometheus"], node.cluster.admin_kubeconfig
    with running_prometheus(binary, kubeconfig, tmp_path / "prometheus", rules) as prometheus:
        running = [p for p in pods.pods(node, mesh, "") if p.status.phase == "Running"]
        meshed = {p.status.pod_ip for p in running if pods.injected(p)}
        planes = {p.status.pod_ip for p in pods.pods(node, pods.SYSTEM, CP_SELECTOR)}

        def up() -> set[str]:
            return {
                t["labels"]["instance"].rsplit(":", 1)[0]
                for t in prometheus.targets()
                if t["health"] == "up"
            }

        wait_until(lambda ips: meshed | planes <= ips, 60, "every pod scraped", observe=up)
        exec_app(node, "client", "load", "http://web/", "--rate=20", "--duration=4")
        exec_app(node, "client", "get", "http://api:8080/")
        # Names outside the cluster go upstream (to CoreDNS, whose own upstream is gone
        # here); and with CoreDNS down, the forward fails: the DNS panels' series.
        lookup_outside(node)
        node.kubectl("scale", "-n", "kube-system", "deployment/coredns", "--replicas=0")
        try:
            pods.wait_gone(node, "kube-system", "k8s-app=kube-dns")
            lookup_outside(node)
        finally:
            node.kubectl("scale", "-n", "kube-system", "deployment/coredns", "--replicas=1")
            node.wait_ready("kube-system", "k8s-app=kube-dns", 1)

        def empty() -> list[str]:
            return [q for q in dashboard_queries() if not prometheus.query(as_promql(q))]

        # Rates need two scrapes after the traffic: until then a query may be empty.
        wait_until(
            lambda left: left == [],
            60,
            "series for every dashboard query",
            observe=empty,
            interval=1,
        )

        before = replicas(node)
        node.kubectl("scale", "-n", pods.SYSTEM, "deployment/meshlet", "--replicas=0")
        try:
            firing = wait_until(
                lambda names: "MeshletControlPlaneUnreachable" in names,
                120,
                "the alert on a lost control plane",
                observe=lambda: {
                    a["labels"]["alertname"] for a in prometheus.alerts() if a["state"] == "firing"
                },
                interval=1,
            )
            print(f"firing with the control plane gone: {sorted(firing)}")
        finally:
            node.kubectl("scale", "-n", pods.SYSTEM, "deployment/meshlet", f"--replicas={before}")
            node.wait_ready(pods.SYSTEM, CP_SELECTOR, int(before))


# --- 7. helm upgrade to a new sidecar image, then helm uninstall --------------------------


def test_helm_upgrade_to_a_new_sidecar_image_then_uninstall_leaves_running_pods_serving(
    node: Node, mesh: str, helm_home: Path, request: pytest.FixtureRequest
) -> None:
    new_tag = f"{__version__}-next"
    repository = node_images.SIDECAR.rsplit(":", 1)[0]
    images.buildah("tag", node_images.SIDECAR, f"{repository}:{new_tag}")
    request.addfinalizer(lambda: images.buildah("rmi", f"{repository}:{new_tag}", check=False))
    node_images.load([f"{repository}:{new_tag}"], node.ctr, node.root)
    pods.upgrade_chart(node, helm_home, f"sidecar.image.tag={new_tag}")
    node.kubectl(
        "rollout", "status", "-n", pods.SYSTEM, "deployment/meshlet", "--timeout=120s", timeout=130
    )
    pods.apply(node, mesh, client_pod("client-next"))
    node.wait_ready(mesh, "app=client", 3)
    images_of = {c.name: c.image for c in pods.pod(node, mesh, "client-next").spec.init_containers}
    assert images_of[PROXY_NAME] == f"{repository}:{new_tag}"
    old = {c.name: c.image for c in pods.pod(node, mesh, "client").spec.init_containers}
    assert old[PROXY_NAME] == node_images.SIDECAR
    for client in ("client", "client-next"):
        assert get_ok(node, client, "http://web/") in web_pods(node)

    helm(
        "uninstall",
        pods.RELEASE,
        "-n",
        pods.SYSTEM,
        "--wait",
        kubeconfig=node.cluster.admin_kubeconfig,
        home=helm_home,
        timeout=240,
    )
    uninstalled = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")

    def leftovers() -> list[str]:
        names = node.kubectl(
            "get",
            "all,configmaps,secrets,leases,serviceaccounts,roles,rolebindings",
            "-n",
            pods.SYSTEM,
            "-o",
            "name",
        ).stdout.split()
        kept = ("kube-root-ca", "serviceaccount/default")  # the namespace's own
        return [n for n in names if not any(k in n for k in kept)]

    # The garbage collector takes the pods after their ReplicaSet: wait for it.
    wait_until(lambda left: left == [], 120, "nothing of the release left", observe=leftovers)
    cluster_wide = node.kubectl(
        "get", "clusterroles,clusterrolebindings,mutatingwebhookconfigurations", "-o", "name"
    ).stdout.split()
    assert [n for n in cluster_wide if "meshlet" in n] == []
    for client in ("client", "client-next"):
        assert get_ok(node, client, "http://web/") in web_pods(node)
        assert get_ok(node, client, "http://api:8080/")
    # The sidecars keep trying the control plane that went: counted, said once.
    ip = pods.pod(node, mesh, "client").status.pod_ip

    def failures() -> float:
        return pods.sample(pods.metrics(ip), "meshlet_xds_stream_failures_total")

    gone = failures()
    retried = wait_until(lambda n: n >= gone + 4, 90, "four failed xDS streams", observe=failures)
    lines = node.kubectl("logs", "-n", mesh, "client", "-c", PROXY_NAME).stdout.splitlines()
    after = [line for line in lines if line[:19] >= uninstalled]
    warned = [
        line.split("s (", 1)[1].rsplit("); retrying", 1)[0]
        for line in after
        if " WARNING " in line and "xDS stream" in line
    ]
    # Said once per kind of failure (the pod gone, its address timing out, the name
    # gone), never once per retry.
    assert warned and len(warned) == len(set(warned)) <= 3, "\n".join(after)
    assert len(warned) < retried - gone, "\n".join(after)
