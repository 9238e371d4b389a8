"""A real node for a test cluster of its own: kubelet, containerd with runc, the CNI
bridge, kube-proxy in nftables mode and CoreDNS as the cluster DNS, so pods run the
project's own images the way a cluster runs them.

The node is a network namespace of its own (`mln-<pid>`), joined to the host by a
veth pair: containerd, the kubelet and kube-proxy run in it (`nsenter --net`, the
host's mount namespace, so the kubelet's volumes are containerd's too), and the pod
bridge, the pods' veths, kube-proxy's tables and the kubelet's iptables rules all
live there and go with it. The API server listens on the host's end of the pair, so
pods reach it (the `kubernetes` Service) and the kubelet reaches it alike; the host
routes the pod CIDR to the node, so the API server calls the webhook's pods.

What the node changes on the host is recorded before it starts and put back when it
stops, also when it fails half way, or by the next run if this one dies
(tests/k8s/node_host.py): the sysctls the kubelet rewrites, its cgroups (under a root
of the node's own name in every hierarchy), the mounts under the node's folder, the
log links in /var/log/containers, containerd's shims. Processes end by their PID.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshlet import defaults
from meshlet.devmesh import netns
from tests.k8s import coredns, node_host, node_images
from tests.k8s.cluster import Cluster, _Process, _process, print_logs, running_cluster
from tests.procs import wait_until

NODE_NAME = "meshlet-node"
# The host's end and the node's end of the link, and the pods' range: outside the
# local mesh's pool (10.250.0.0/16) and the service range.
LINK = ipaddress.IPv4Network("10.241.0.0/30")
HOST_IP, NODE_IP = (str(a) for a in LINK.hosts())
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
DNS_IP = str(ipaddress.ip_network(defaults.SERVICE_CIDR)[10])  # kubeadm's kube-dns
START_TIMEOUT = 120.0


def is_ready(found: Any) -> bool:
    """A Pod's or a Node's Ready condition is True."""
    return any(c.type == "Ready" and c.status == "True" for c in found.status.conditions or ())


def missing() -> str | None:
    """Why a real node cannot run here, or None."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, the kubelet, network namespaces)"
    for tool in ("runc", "nsenter", "buildah", "podman", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/test.sh installs it)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "the CNI plugins are not installed (apt-get install containernetworking-plugins)"
    return None


@dataclass
class Node:
    cluster: Cluster
    root: Path
    ctr: list[str]
    # The kubelet's cgroupRoot, in every hierarchy: the pods' cgroups are under it.
    cgroup_root: str
    processes: dict[str, _Process] = field(default_factory=dict)

    @property
    def pod_logs(self) -> Path:
        """The kubelet's podLogsDir: <namespace>_<pod>_<uid>/<container>/0.log."""
        return self.root / "pod-logs"

    def check_alive(self) -> None:
        self.cluster.check_alive()
        for process in self.processes.values():
            process.check_alive()

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, **kwargs)

    def wait_ready(self, namespace: str, selector: str, count: int, timeout: float = 120) -> None:
        """Until `count` pods match `selector` and all of them are Ready."""

        def ready() -> list[bool]:
            self.check_alive()
            pods = self.cluster.core.list_namespaced_pod(namespace, label_selector=selector)
            return [is_ready(p) for p in pods.items if p.metadata.deletion_timestamp is None]

        wait_until(
            lambda found: len(found) == count and all(found),
            timeout,
            f"{count} Ready pods {selector} in {namespace}",
            observe=ready,
            interval=0.5,
        )

    def containerd_tasks(self) -> list[str]:
        listed = subprocess.run(
            [*self.ctr, "-n", "k8s.io", "tasks", "ls", "-q"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return listed.stdout.split()


def _in_node(namespace: str, argv: list[str]) -> list[str]:
    # nsenter execs: the PID is the command's. Only the network namespace changes.
    return ["nsenter", f"--net=/run/netns/{namespace}", "--", *argv]


def _containerd_config(root: Path) -> str:
    state = root / "containerd"
    return f"""version = 3
root = "{state}/root"
state = "{state}/state"

[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"

[plugins."io.containerd.cri.v1.runtime"]
  # No CAP_SYS_RESOURCE here: runc must not lower a container's oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{root}/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc")}"
        Root = "{state}/runc"
        SystemdCgroup = false

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{node_images.PAUSE}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/opt"

[plugins."io.containerd.nri.v1.nri"]
  disable = true
"""


def _cni_config(root: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "meshlet-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(root / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _kubelet_config(root: Path, cgroup_root: str, ca: Path, serving: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "containerRuntimeEndpoint": f"unix://{root}/containerd.sock",
        # The machine's cgroups are v1 (hybrid): allowed, and driven by the kubelet.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup_root}",
        "failSwapOn": False,
        "clusterDNS": [DNS_IP],
        "clusterDomain": defaults.CLUSTER_DOMAIN,
        "resolvConf": str(root / "resolv.conf"),
        "podCIDR": POD_CIDR,
        "podLogsDir": str(root / "pod-logs"),  # Node.pod_logs
        "serializeImagePulls": False,
        # The images were put there by hand: never collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "protectKernelDefaults": False,
        "shutdownGracePeriod": "0s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "5s",
    }


def _link_up(namespace: str, host_link: str) -> None:
    netns.add(namespace)
    netns.ip("link", "add", host_link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
    netns.ip("addr", "add", f"{HOST_IP}/{LINK.prefixlen}", "dev", host_link)
    netns.ip("link", "set", host_link, "up")
    netns.ip("addr", "add", f"{NODE_IP}/{LINK.prefixlen}", "dev", "eth0", namespace=namespace)
    netns.ip("link", "set", "eth0", "up", namespace=namespace)
    netns.ip("route", "add", "default", "via", HOST_IP, namespace=namespace)
    netns.ip("route", "add", POD_CIDR, "via", NODE_IP)
    subprocess.run(_in_node(namespace, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]), check=True)


@contextlib.contextmanager
def running_node(binaries: Mapping[str, Path]) -> Iterator[Node]:
    """The node and its cluster, ready: the Node Ready, CoreDNS serving."""
    with node_host.node_lock():
        state = node_host.HostState.new(Path(tempfile.mkdtemp(prefix="meshlet-node-")))
        state.save()  # before anything changes, for a later run if this one dies
        root = Path(state.root)
        node: Node | None = None

        def stop_processes() -> None:
            for name in reversed(list(node.processes) if node else ()):
                node.processes[name].stop()  # type: ignore[union-attr]

        try:
            _link_up(state.namespace, state.link)
            with running_cluster(
                binaries,
                address=HOST_IP,
                advertise_address=HOST_IP,
                controllers=("*",),
                stand_in_nodes=False,
                # A kubelet may read and write what its own pods need, and no more.
                authorization=("Node", "RBAC"),
                apiserver_args=(
                    # Webhooks called at their pods' addresses, as with a CNI whose pod
                    # network the control plane's host reaches.
                    "--enable-aggregator-routing=true",
                    "--enable-admission-plugins=NodeRestriction",
                    # The node's name is no DNS name here: logs, exec and port-forward
                    # dial its address.
                    "--kubelet-preferred-address-types=InternalIP",
                ),
            ) as cluster:
                ctr = [str(binaries["ctr"]), "--address", f"{root}/containerd.sock"]
                node = Node(cluster, root, ctr, state.cgroup_root)
                try:
                    _start(node, binaries, state.namespace)
                    yield node
                except BaseException:
                    print_logs(root / "logs")
                    raise
                finally:
                    _drain(node)
        finally:
            node_host.put_back(state, before=stop_processes)


def _start(node: Node, binaries: Mapping[str, Path], namespace: str) -> None:
    cluster, root = node.cluster, node.root
    assert cluster.authority is not None
    (root / "logs").mkdir()
    (root / "cni" / "net.d").mkdir(parents=True)
    (root / "cni" / "net.d" / "10-meshlet-test.conflist").write_text(json.dumps(_cni_config(root)))
    (root / "containerd.toml").write_text(_containerd_config(root))
    # Names outside the cluster go to the host's end of the link, where nothing answers:
    # nothing in the tests leaves the machine.
    (root / "resolv.conf").write_text(f"nameserver {HOST_IP}\n")
    node_host.make_cgroup_root(node.cgroup_root)

    path = f"{binaries['containerd'].parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    containerd = _process(
        root,
        "containerd",
        _in_node(
            namespace,
            [
                "env",
                f"PATH={path}",
                str(binaries["containerd"]),
                "--config",
                f"{root}/containerd.toml",
            ],
        ),
    )
    node.processes["containerd"] = containerd
    containerd.start()
    wait_until(
        lambda: subprocess.run([*node.ctr, "version"], capture_output=True).returncode == 0,
        60,
        "containerd to answer",
        interval=0.2,
    )
    node_images.load(node_images.build_all(binaries), node.ctr, root)

    ca = cluster.authority
    scheduler = ca.issue("kube-scheduler", "system:kube-scheduler")
    scheduler_config = cluster.kubeconfig("scheduler", cert=scheduler)
    node.processes["kube-scheduler"] = _process(
        root,
        "kube-scheduler",
        [
            str(binaries["kube-scheduler"]),
            f"--kubeconfig={scheduler_config}",
            "--leader-elect=false",
        ],
    )
    node.processes["kube-scheduler"].start()

    kubelet_client = ca.issue(
        "kubelet", f"system:node:{NODE_NAME}", organizations=("system:nodes",)
    )
    serving = ca.issue("kubelet-serving", NODE_NAME, server=True, hosts=(NODE_IP, NODE_NAME))
    config = root / "kubelet.yaml"
    config.write_text(yaml.safe_dump(_kubelet_config(root, node.cgroup_root, cluster.ca, serving)))
    node.processes["kubelet"] = _process(root, "kubelet", _in_node(namespace, [
        str(binaries["kubelet"]), f"--config={config}",
        f"--kubeconfig={cluster.kubeconfig('kubelet', cert=kubelet_client)}",
        f"--root-dir={root / 'kubelet'}", f"--cert-dir={root / 'kubelet-pki'}",
        f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
    ]))  # fmt: skip
    node.processes["kubelet"].start()
    wait_until(lambda: _node_ready(node), START_TIMEOUT, f"Node {NODE_NAME} Ready", interval=0.5)

    proxy = ca.issue("kube-proxy", "system:kube-proxy")
    node.processes["kube-proxy"] = _process(root, "kube-proxy", _in_node(namespace, [
        str(binaries["kube-proxy"]), "--proxy-mode=nftables",
        f"--kubeconfig={cluster.kubeconfig('kube-proxy', cert=proxy)}",
        f"--hostname-override={NODE_NAME}", f"--cluster-cidr={CLUSTER_CIDR}",
        "--healthz-bind-address=127.0.0.1:10256", "--metrics-bind-address=127.0.0.1:10249",
        # conntrack's limits are the machine's, not the test node's to set.
        "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
    ]))  # fmt: skip
    node.processes["kube-proxy"].start()

    cluster.apply(*coredns.cluster_dns_objects(node_images.COREDNS, DNS_IP))
    node.wait_ready("kube-system", "k8s-app=kube-dns", 1, timeout=START_TIMEOUT)


def _node_ready(node: Node) -> bool:
    node.check_alive()
    try:
        found = node.cluster.core.read_node(NODE_NAME)
    except Exception:
        return False
    return is_ready(found)


def _drain(node: Node) -> None:
    """Every pod stopped by the kubelet before the node goes (what is left after 30 s
    is killed; the cgroups catch the rest)."""
    if "kubelet" not in node.processes:
        return
    # Nothing new is scheduled from here on: deleted pods stay deleted.
    scheduler = node.processes.pop("kube-scheduler", None)
    if scheduler is not None:
        scheduler.stop()
    node.kubectl(
        "delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force",
        "--wait=false", check=False,
    )  # fmt: skip
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not node.containerd_tasks(), 30, "the node's containers to stop")
    for task in node.containerd_tasks():
        subprocess.run([*node.ctr, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", task],
                       capture_output=True, check=False)  # fmt: skip
