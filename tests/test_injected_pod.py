"""The injected spec really works: its exact containers, run as a kubelet would run them.

A devmesh pod gets what Kubernetes gives a pod: a resolv.conf naming the cluster DNS
service address (10.96.0.10, here a real unbound holding the control plane's Service
name, as the cluster's DNS would), the search path and ndots:5. The injected
`meshlet-init` runs with its command line and environment, as root with NET_ADMIN and
no other capability; `meshlet-proxy` runs with its own, as its uid and gid, and finds
the control plane by that Service name. The app, as another uid, then reaches `web`
by its short name through the captured DNS and proxy. A Job's pod shows that nothing
of the sidecar keeps it alive once its main container is done.

Needs root (namespaces, nftables); the whole mesh is removed after each test.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlet import defaults
from meshlet.devmesh.mesh import DevMesh, Pod
from meshlet.devmesh.stack import APP_UID, PYTHON, LocalMesh, ServiceSpec, pod_resolv_conf
from meshlet.inject.pod import STATE_VOLUME, inject_pod
from meshlet.inject.settings import InjectorSettings
from meshlet.sidecar.saved_state import FILE_NAME
from tests.container_run import container_argv, container_env, find, pod_fields, with_empty_dirs
from tests.netlab import skip_unless_netns_and_nftables
from tests.procs import http_get, wait_until

CLUSTER_DNS = "10.96.0.10"  # what kubelets put in a pod's resolv.conf: the DNS Service's IP
SYSTEM = defaults.SYSTEM_NAMESPACE
CONTROL_PLANE_NAME = f"{defaults.CONTROL_PLANE_SERVICE}.{SYSTEM}.svc"
# Round robin chosen: the test counts an exact spread, and an http port's default,
# least request, spreads one connection at a time at random when none is open.
WEB = ServiceSpec("web", "10.96.0.20", 80, ("web-0", "web-1", "web-2"), lb_policy="round-robin")
SETTINGS = InjectorSettings(
    control_plane=f"{CONTROL_PLANE_NAME}:{defaults.XDS_PORT}", drain_seconds=2
)
ZONE = "zone-a"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    skip_unless_netns_and_nftables()
    if shutil.which("unbound") is None and not Path("/usr/sbin/unbound").exists():
        pytest.skip("unbound is not installed: it plays the cluster's DNS here")
    work = Path(tempfile.mkdtemp(prefix="meshlet-injected-", dir=tmp_path))
    work.chmod(0o755)
    with DevMesh() as devmesh:
        local = LocalMesh(devmesh, work)
        for name in WEB.backends:
            local.add_backend(name, ready=True)
        local.write_services([WEB])
        local.start_control_plane()
        yield local


def start_cluster_dns(local: LocalMesh) -> Pod:
    """unbound on 10.96.0.10, answering the control plane's Service name with its pod IP
    (a headless Service, as far as DNS goes), NXDOMAIN for the rest of the domain."""
    assert local.control_plane is not None
    pod = local.mesh.add_pod("kube-dns", extra_addresses=[CLUSTER_DNS])
    config = local.work / "unbound.conf"
    config.write_text(
        "server:\n"
        f'  directory: "{local.work}"\n'
        f"  interface: {CLUSTER_DNS}\n"
        "  port: 53\n"
        "  num-threads: 1\n"
        "  do-daemonize: no\n"
        '  username: ""\n'
        '  chroot: ""\n'
        "  use-syslog: no\n"
        '  logfile: ""\n'
        '  pidfile: ""\n'
        "  do-ip6: no\n"
        "  access-control: 0.0.0.0/0 allow\n"
        f'  local-zone: "{defaults.CLUSTER_DOMAIN}." static\n'
        f'  local-data: "{CONTROL_PLANE_NAME}.{defaults.CLUSTER_DOMAIN}. 30 IN A'
        f' {local.control_plane.ip}"\n'
        "remote-control:\n  control-enable: no\n"
    )
    unbound = shutil.which("unbound") or "/usr/sbin/unbound"
    process = pod.spawn([unbound, "-d", "-c", str(config)], local.log("unbound"))

    fqdn = f"{CONTROL_PLANE_NAME}.{defaults.CLUSTER_DOMAIN}"

    def answers() -> str:
        if process.poll() is not None:
            raise AssertionError(f"unbound exited:\n{local.log('unbound').read_text()}")
        return pod.run(["dig", "+short", "+time=1", f"@{CLUSTER_DNS}", fqdn]).stdout.strip()

    wait_until(lambda ip: ip == local.control_plane.ip, 30, "the cluster DNS", observe=answers)
    return pod


def injected(pod: dict[str, Any]) -> dict[str, Any]:
    outcome = inject_pod(pod, "default", SETTINGS)
    assert outcome.injected, outcome.reason
    return dict(outcome.pod)


@contextlib.contextmanager
def run_pod(
    local: LocalMesh, pod: dict[str, Any], name: str
) -> Iterator[tuple[Pod, subprocess.Popen[bytes]]]:
    """The pod's meshlet containers, as the kubelet runs them: the init container to its
    end, then the sidecar until its startup probe passes. Yields the pod and the sidecar."""
    netns_pod = local.mesh.add_pod(name, resolv_conf=pod_resolv_conf("default"))
    start_cluster_dns(local)
    fields = pod_fields(pod, "node-a", "default")
    init_containers = pod["spec"]["initContainers"]
    regular = pod["spec"]["containers"]
    init = find(init_containers, "meshlet-init")
    env = container_env(init, fields)
    # Root with the container's capabilities only: NET_ADMIN.
    caps = ",".join(f"+{c.lower()}" for c in init["securityContext"]["capabilities"]["add"])
    result = netns_pod.run(
        ["setpriv", f"--bounding-set=-all,{caps}", "--", *container_argv(init, env)], env=env
    )
    assert result.returncode == 0, result.stderr
    proxy = find([*init_containers, *regular], "meshlet-proxy")
    env = with_empty_dirs(pod, proxy, container_env(proxy, fields), local.work / name)
    uid = proxy["securityContext"]["runAsUser"]
    sidecar = netns_pod.spawn(
        container_argv(proxy, env),
        local.log(f"sidecar-{name}"),
        uid=uid,
        gid=proxy["securityContext"]["runAsGroup"],
        env=env,
    )
    # The kubelet runs the postStart hook in the sidecar's container and starts the app's
    # containers once it returns (native and classic alike).
    hook = proxy["lifecycle"]["postStart"]["exec"]
    held = netns_pod.run(container_argv(hook, env), uid=uid, timeout=60)
    if held.returncode != 0:
        log = local.log(f"sidecar-{name}").read_text()
        raise AssertionError(f"the hook failed: {held.stderr}\nthe sidecar's log:\n{log}")
    yield netns_pod, sidecar


def app_pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name, "topology.kubernetes.io/zone": ZONE}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app"}], **spec},
    }


def test_the_injected_containers_capture_dns_and_services(mesh: LocalMesh) -> None:
    pod = injected(app_pod("client-7f9c"))
    with run_pod(mesh, pod, "client") as (client, _):
        mesh.client = client
        for name in ("web", "web.default", "web.default.svc.cluster.local"):
            result = client.run(["getent", "hosts", name], uid=APP_UID)
            assert result.returncode == 0, result.stderr
            assert result.stdout.split()[0] == WEB.cluster_ip
        report = mesh.load(["web=http://web/"], "--count=60")["targets"]["web"]
        assert report["errors"] == 0, report["last_error"]
        assert report["endpoints"] == {"web-0": 20, "web-1": 20, "web-2": 20}
        # The control plane knows it by the name the downward API gave it, in its zone.
        assert mesh.control_plane is not None
        status, body = http_get(
            f"http://{mesh.control_plane.ip}:{defaults.CONTROL_PLANE_ADMIN_PORT}/debug/clients"
        )
        assert status == 200 and '"client-7f9c.default"' in body
        metrics = http_get(f"http://{client.ip}:{defaults.METRICS_PORT}/stats/prometheus")
        assert metrics[0] == 200 and "meshlet_proxy_connections_total" in metrics[1]
        # The sidecar keeps its config in the pod's emptyDir, for a restart.
        saved = mesh.work / "client" / STATE_VOLUME / FILE_NAME
        wait_until(saved.exists, 30, "the sidecar's saved config in its emptyDir")


def job_pod(mode: str) -> dict[str, Any]:
    main = "getent hosts web"
    if mode == "classic":
        # A classic sidecar outlives the job unless told: the main container says so.
        main += (
            f' && {PYTHON} -c "import urllib.request as u; u.urlopen(u.Request('
            f"'http://127.0.0.1:{defaults.SIDECAR_ADMIN_PORT}/quitquitquit', b'', method='POST'))\""
        )
    pod = app_pod("nightly-x2k4", restartPolicy="Never")
    pod["metadata"]["annotations"] = {"meshlet.io/sidecar-mode": mode}
    pod["spec"]["containers"] = [
        {"name": "main", "image": "registry.example/job", "command": ["sh", "-c", main]}
    ]
    return injected(pod)


def test_a_jobs_pod_completes_with_a_native_sidecar(mesh: LocalMesh) -> None:
    pod = job_pod("native")
    # From the spec: the only regular container is the job's; the sidecar is an init
    # container with restartPolicy Always, which Kubernetes never waits for to complete.
    assert [c["name"] for c in pod["spec"]["containers"]] == ["main"]
    proxy = find(pod["spec"]["initContainers"], "meshlet-proxy")
    assert proxy["restartPolicy"] == "Always"
    with run_pod(mesh, pod, "job") as (job, sidecar):
        main = find(pod["spec"]["containers"], "main")
        result = job.run(main["command"], uid=APP_UID)
        assert result.returncode == 0 and WEB.cluster_ip in result.stdout, result.stderr
        # The main container is done: the kubelet stops the sidecars, and it goes at once.
        sidecar.terminate()
        assert sidecar.wait(timeout=SETTINGS.drain_seconds + 10) == 0


def test_a_jobs_pod_completes_with_a_classic_sidecar_told_to_quit(mesh: LocalMesh) -> None:
    pod = job_pod("classic")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["meshlet-proxy", "main"]
    with run_pod(mesh, pod, "job") as (job, sidecar):
        main = find(pod["spec"]["containers"], "main")
        result = job.run(main["command"], uid=APP_UID)
        assert result.returncode == 0, result.stderr
        # Nobody signals it: the main container's POST /quitquitquit ends it.
        assert sidecar.wait(timeout=SETTINGS.drain_seconds + 10) == 0
