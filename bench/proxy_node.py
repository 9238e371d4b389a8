"""The node of bench/proxy.py: one network namespace, as one Kubernetes node.

The node namespace is a pod of a mesh on the machine (meshlet.devmesh), so a
mesh that starts after a crash clears it. Inside it, as on a node: the bridge
the pods sit on (a second mesh, made from inside the namespace), the test
cluster (etcd, kube-apiserver, kube-controller-manager on the node's loopback),
kube-proxy in nftables mode and the meshlet control plane, all on the node's
own network. Nothing of it touches the machine's namespace but that one pod,
and it all goes with it: the kube-proxy tables, the pods, the processes.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meshlet.devmesh import netns
from meshlet.devmesh.mesh import DevMesh
from tests.k8s import build
from tests.k8s.cluster import NODES, Cluster, running_cluster


@dataclass
class Node:
    mesh: DevMesh  # the node's bridge and its pods
    cluster: Cluster | None
    no_cluster: str  # why there is none ("" when there is)

    @property
    def ip(self) -> str:
        """The node's address on its bridge: where pods reach what runs on the node."""
        return self.mesh.gateway


@contextlib.contextmanager
def node(with_cluster: bool) -> Iterator[Node]:
    with DevMesh(cleanup_on_sigterm=True) as machine:
        host = machine.add_pod("node")
        # This thread (and what it starts) lives in the node from here on.
        with netns.entered(host.namespace), DevMesh() as mesh, contextlib.ExitStack() as stack:
            # A node routes what kube-proxy DNATs to a pod (a new namespace does not).
            subprocess.run(["sysctl", "-q", "net.ipv4.ip_forward=1"], check=True)
            cluster, why = None, "--no-kube-proxy"
            if with_cluster:
                binaries = build.binaries()
                if isinstance(binaries, str):
                    why = binaries
                else:
                    cluster, why = stack.enter_context(running_cluster(binaries)), ""
            yield Node(mesh, cluster, why)


def kube_proxy(node: Node, cpu: str, log: Path) -> subprocess.Popen[bytes]:
    """kube-proxy in nftables mode on the node, as its DaemonSet pod runs it (host
    network, the node's name); the mesh ends it. It leaves conntrack's sysctls alone:
    the node's namespace has its own, and the machine-wide limit is not its to set."""
    assert node.cluster is not None and node.mesh.subnet is not None
    argv = ["taskset", "-c", cpu, str(node.cluster.binaries["kube-proxy"])]
    argv += [
        "--proxy-mode=nftables",
        f"--kubeconfig={node.cluster.admin_kubeconfig}",
        f"--hostname-override={NODES[0][0]}",
        # Traffic from the pods is local: no masquerade for it, as with a pod CIDR.
        f"--cluster-cidr={node.mesh.subnet}",
        "--healthz-bind-address=127.0.0.1:10256",
        "--metrics-bind-address=127.0.0.1:10249",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
    ]
    return node.mesh.spawn(argv, log)
