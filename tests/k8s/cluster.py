"""A real Kubernetes control plane on loopback, as controller-runtime's envtest runs one.

etcd, kube-apiserver (HTTPS, a fresh CA, RBAC, service-account tokens) and
kube-controller-manager (the workload, EndpointSlice, namespace, garbage-collector
and service-account controllers, each with its own service-account credentials,
as kubeadm runs it). No scheduler and no kubelet: `kubelet.Kubelet` binds pods
to the Node objects made here and reports them Running and Ready, so
EndpointSlices come from Kubernetes' own controller.

Every process is ended by its PID and every file removed when the cluster stops,
also when start-up fails half way.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from meshlet import defaults
from tests.k8s import pki
from tests.procs import LOG_TAIL_CHARS, free_port, stop_process, wait_until

# The controllers the tests need; kube-controller-manager's own names.
CONTROLLERS = (
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "replicaset-controller",
    "deployment-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "cronjob-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
)
SERVICE_ACCOUNT_ISSUER = f"https://kubernetes.default.svc.{defaults.CLUSTER_DOMAIN}"
# Nodes the kubelet stand-in schedules onto, with their zones.
NODES = (("node-a", "zone-a"), ("node-b", "zone-b"), ("node-c", "zone-c"))
ZONE_LABEL = "topology.kubernetes.io/zone"
START_TIMEOUT = 60.0
ADVERTISE_ADDRESS = "10.240.0.254"


@dataclass
class _Process:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def stop(self) -> None:
        if self.popen is not None:
            stop_process(self.popen, timeout=15)
            self.popen = None

    def check_alive(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            code = None if self.popen is None else self.popen.returncode
            tail = self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
            raise AssertionError(f"{self.name} is not running (exit {code}); its log ends:\n{tail}")


@dataclass
class Cluster:
    root: Path
    binaries: Mapping[str, Path]
    ca: Path
    etcd_url: str
    server: str
    admin_kubeconfig: Path
    # Issues the certificates of what joins the cluster later (a node's kubelet, say).
    authority: pki.CertificateAuthority | None = None
    _processes: dict[str, _Process] = field(default_factory=dict)
    _api: k8s.ApiClient | None = None
    _namespaces: int = 0
    _apiserver_args: list[str] = field(default_factory=list)

    # --- clients -------------------------------------------------------------

    @property
    def api(self) -> k8s.ApiClient:
        """The admin (system:masters) client."""
        if self._api is None:
            self._api = k8s_config.new_client_from_config(config_file=str(self.admin_kubeconfig))
        return self._api

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.kubectl_argv(*args, kubeconfig=kubeconfig),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def kubectl_argv(self, *args: str, kubeconfig: Path | None = None) -> list[str]:
        """kubectl's argv, for a caller that runs it itself (streaming its output)."""
        return [
            str(self.binaries["kubectl"]),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            *args,
        ]

    def apply(self, *objects: Mapping[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(list(objects)))

    def kubeconfig(
        self,
        name: str,
        *,
        token: str | None = None,
        cert: pki.KeyPair | None = None,
        server: str | None = None,
    ) -> Path:
        """A kubeconfig file for one user: a bearer token or a client certificate."""
        user: dict[str, str] = {}
        if token is not None:
            user["token"] = token
        if cert is not None:
            user["client-certificate"] = str(cert.cert)
            user["client-key"] = str(cert.key)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": server or self.server,
                        "certificate-authority": str(self.ca),
                    },
                }
            ],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": "test", "user": name}}],
            "current-context": name,
        }
        path = self.root / f"{name}.kubeconfig"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config))
        return path

    def admin_kubeconfig_via(self, server: str) -> Path:
        """The admin's kubeconfig for the API server reached at `server` (a relay, say)."""
        admin = pki.KeyPair(self.root / "admin.crt", self.root / "admin.key")
        return self.kubeconfig(f"admin-{server.rsplit(':', 1)[1]}", cert=admin, server=server)

    def new_namespace(self, hint: str) -> str:
        """A namespace with a fresh name made from `hint` (a test's name, say)."""
        base = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-") or "test"
        self._namespaces += 1
        name = f"{base}-{self._namespaces}"
        self.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        return name

    def delete_namespace(self, name: str) -> None:
        # The namespace controller deletes what is in it; the test need not wait.
        with contextlib.suppress(k8s.ApiException):
            self.core.delete_namespace(name)

    @contextlib.contextmanager
    def service_account(
        self,
        namespace: str,
        name: str,
        rules: Sequence[Mapping[str, Any]],
        namespaced_rules: Sequence[Mapping[str, Any]] = (),
    ) -> Iterator[ServiceAccount]:
        """A ServiceAccount bound to a ClusterRole (named `<namespace>-<name>`) of exactly
        `rules`, and to a Role in its namespace of `namespaced_rules`, with a token from the
        TokenRequest API; the cluster role and binding go afterwards (the namespace takes
        the rest with it)."""
        role = f"{namespace}-{name}"
        rbac = k8s.RbacAuthorizationV1Api(self.api)
        self.core.create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name))
        )
        subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
        if namespaced_rules:
            rbac.create_namespaced_role(
                namespace, {"metadata": {"name": name}, "rules": list(namespaced_rules)}
            )
            rbac.create_namespaced_role_binding(
                namespace,
                {
                    "metadata": {"name": name},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": name,
                    },
                    "subjects": [subject],
                },
            )
        try:
            rbac.create_cluster_role({"metadata": {"name": role}, "rules": list(rules)})
            rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": role},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": role,
                    },
                    "subjects": [subject],
                }
            )
            request = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            }
            response = self.core.create_namespaced_service_account_token(
                name, namespace, request, _preload_content=False
            )
            token = json.loads(response.data)["status"]["token"]
            yield ServiceAccount(self, role, token)
        finally:
            for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
                with contextlib.suppress(k8s.ApiException):
                    delete(role)

    # --- the API server's life ---------------------------------------------------

    def stop_apiserver(self) -> None:
        self._processes["kube-apiserver"].stop()

    def start_apiserver(self) -> None:
        self._apiserver(int(self.server.rsplit(":", 1)[1]), "kube-apiserver").start()

    def check_alive(self) -> None:
        for process in self._processes.values():
            process.check_alive()

    @contextlib.contextmanager
    def second_apiserver(self, started: bool = True) -> Iterator[ApiServer]:
        """Another kube-apiserver on the same etcd, as in an HA control plane: a test
        may stop and start it while the rest of the cluster goes on."""
        port = free_port()
        apiserver = self._apiserver(port, f"kube-apiserver-{port}", fresh=True)
        if started:
            apiserver.start()
        try:
            yield apiserver
        finally:
            apiserver.stop()

    def _apiserver(self, port: int, name: str, fresh: bool = False) -> ApiServer:
        process = self._processes.get(name)
        if process is None or fresh:
            argv = [*self._apiserver_args, f"--secure-port={port}"]
            process = _process(self.root, name, argv)
        host = self.server.rsplit(":", 1)[0]
        return ApiServer(self, process, f"{host}:{port}")

    # --- etcd, for the tests that need what only etcd can do ---------------------

    def etcd(self, call: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One call of etcd's JSON gateway (`kv/put`, `kv/compaction`, ...)."""
        request = urllib.request.Request(
            f"{self.etcd_url}/v3/{call}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def etcd_bump_and_compact(self) -> int:
        """Write a key of the test's own (outside Kubernetes' prefix), then compact to it.

        Every resourceVersion before it is then gone: a watch resumed from one
        gets 410 Gone once the API server's watch cache cannot serve it either.
        """
        key = base64.b64encode(b"/meshlet-test/compaction").decode()
        put = self.etcd("kv/put", {"key": key, "value": base64.b64encode(b"x").decode()})
        revision = int(put["header"]["revision"])
        self.etcd("kv/compaction", {"revision": revision, "physical": True})
        self.etcd("kv/deleterange", {"key": key})
        return revision


@dataclass
class ServiceAccount:
    cluster: Cluster
    role: str  # the ClusterRole (and ClusterRoleBinding) of its rules
    token: str

    def kubeconfig(self, server: str | None = None) -> Path:
        """A kubeconfig of this account for the cluster's API server, or for `server`."""
        suffix = f"-{server.rsplit(':', 1)[1]}" if server else ""
        return self.cluster.kubeconfig(f"{self.role}{suffix}", token=self.token, server=server)

    def grant(self, rules: Sequence[Mapping[str, Any]]) -> None:
        """Replace the role's rules."""
        rbac = k8s.RbacAuthorizationV1Api(self.cluster.api)
        rbac.patch_cluster_role(self.role, {"rules": list(rules)})


@dataclass
class ApiServer:
    cluster: Cluster
    process: _Process
    server: str  # https://127.0.0.1:PORT

    def start(self) -> None:
        self.process.start()
        context = ssl.create_default_context(cafile=str(self.cluster.ca))
        admin = self.cluster.root / "admin"
        context.load_cert_chain(f"{admin}.crt", f"{admin}.key")

        def ready() -> int:
            self.process.check_alive()
            with urllib.request.urlopen(f"{self.server}/readyz", context=context, timeout=2) as r:
                return int(r.status)

        wait_until(
            lambda status: status == 200,
            START_TIMEOUT,
            f"{self.process.name} /readyz",
            observe=ready,
            interval=0.2,
            ignoring=(OSError, urllib.error.URLError),
        )

    def stop(self) -> None:
        self.process.stop()


def _process(root: Path, name: str, argv: Sequence[str]) -> _Process:
    return _Process(name, list(argv), root / "logs" / f"{name}.log")


@contextlib.contextmanager
def running_cluster(
    binaries: Mapping[str, Path],
    *,
    address: str = "127.0.0.1",
    advertise_address: str = ADVERTISE_ADDRESS,
    controllers: Sequence[str] = CONTROLLERS,
    stand_in_nodes: bool = True,
    authorization: Sequence[str] = ("RBAC",),
    apiserver_args: Sequence[str] = (),
) -> Iterator[Cluster]:
    """The control plane, its API server on `address`. With `stand_in_nodes`, Node
    objects for the kubelet stand-in (and no node controllers may touch them: the
    default `controllers` leave nodes alone); without, a real node joins later."""
    root = Path(tempfile.mkdtemp(prefix="meshlet-k8s-"))
    processes: dict[str, _Process] = {}
    try:
        (root / "logs").mkdir()
        ca = pki.CertificateAuthority(root)
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            hosts=(
                "127.0.0.1",
                address,
                advertise_address,
                first_service_ip(),
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{defaults.CLUSTER_DOMAIN}",
            ),
        )
        admin = ca.issue("admin", "meshlet-test-admin", organizations=("system:masters",))
        controller_manager = ca.issue("kcm", "system:kube-controller-manager")
        sa = pki.service_account_keys(root)
        # What the API server shows a kubelet when it asks for logs, exec or port-forward.
        kubelet_client = ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
            organizations=("system:masters",),
        )  # fmt: skip

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port(address)
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        server = f"https://{address}:{api_port}"
        cluster = Cluster(root, binaries, ca.cert, etcd_url, server, root / "admin.kubeconfig")
        cluster.authority = ca
        cluster._processes = processes
        cluster.kubeconfig("admin", cert=admin)
        kcm_kubeconfig = cluster.kubeconfig("kcm", cert=controller_manager)

        processes["etcd"] = _process(
            root,
            "etcd",
            [
                str(binaries["etcd"]),
                "--name=test",
                f"--data-dir={root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
                # A test cluster's data is worth nothing after the run.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        cluster._apiserver_args = [
            str(binaries["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={address}",
            # What the `kubernetes` Service's endpoint says; the reconciler refuses
            # loopback (a cluster without a node: nothing dials it there).
            f"--advertise-address={advertise_address}",
            f"--cert-dir={root / 'apiserver-certs'}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert}",
            f"--service-cluster-ip-range={defaults.SERVICE_CIDR}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            f"--authorization-mode={','.join(authorization)}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={ca.cert}",
            *apiserver_args,
        ]
        main_apiserver = cluster._apiserver(api_port, "kube-apiserver")
        processes["kube-apiserver"] = main_apiserver.process
        processes["kube-controller-manager"] = _process(
            root,
            "kube-controller-manager",
            [
                str(binaries["kube-controller-manager"]),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--controllers={','.join(controllers)}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={ca.cert}",
                "--leader-elect=false",
                "--secure-port=0",
                "--profiling=false",
            ],
        )
        processes["etcd"].start()
        main_apiserver.start()
        processes["kube-controller-manager"].start()
        if stand_in_nodes:
            _make_nodes(cluster)
        # The serviceaccount controller is up once `default` has its account;
        # ServiceAccount admission refuses pods until then.
        wait_until(
            lambda: _has_default_account(cluster),
            START_TIMEOUT,
            "kube-controller-manager to create default/default",
            interval=0.2,
        )
        yield cluster
    except BaseException:
        print_logs(root / "logs")
        raise
    finally:
        for name in reversed(list(processes)):
            processes[name].stop()
        shutil.rmtree(root, ignore_errors=True)


def print_logs(folder: Path, chars: int = 4000) -> None:
    """The end of every process's log: pytest shows it with a test that failed."""
    for log in sorted(folder.glob("*.log")):
        print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-chars:]}")


def first_service_ip() -> str:
    """The `kubernetes` Service's ClusterIP: the first address of the service range."""
    return str(next(ipaddress.ip_network(defaults.SERVICE_CIDR).hosts()))


def _has_default_account(cluster: Cluster) -> bool:
    cluster._processes["kube-controller-manager"].check_alive()
    try:
        cluster.core.read_namespaced_service_account("default", "default")
    except k8s.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _make_nodes(cluster: Cluster) -> None:
    for i, (name, zone) in enumerate(NODES, start=1):
        node = k8s.V1Node(
            metadata=k8s.V1ObjectMeta(
                name=name,
                labels={
                    "kubernetes.io/hostname": name,
                    ZONE_LABEL: zone,
                    "topology.kubernetes.io/region": "test",
                },
            )
        )
        cluster.core.create_node(node)
        status = {
            "status": {
                "addresses": [{"type": "InternalIP", "address": f"10.240.0.{i}"}],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
            }
        }
        cluster.core.patch_node_status(name, status)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
