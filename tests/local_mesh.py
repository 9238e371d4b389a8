"""A whole local mesh for an end-to-end test: backends, one service, the control plane
and a client pod with its sidecar, checked to leave nothing behind."""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from meshlet.devmesh import netns
from meshlet.devmesh.mesh import DevMesh
from meshlet.devmesh.stack import LocalMesh, ServiceSpec
from tests.netlab import skip_unless_netns_and_nftables


@contextlib.contextmanager
def local_mesh(tmp_path: Path, service: ServiceSpec) -> Iterator[LocalMesh]:
    skip_unless_netns_and_nftables()
    work = Path(tempfile.mkdtemp(prefix="meshlet-e2e-", dir=tmp_path))
    work.chmod(0o755)
    with DevMesh() as mesh:
        local = LocalMesh(mesh, work)
        for name in service.backends:
            local.add_backend(name)
        local.write_services([service])
        local.start_control_plane()
        local.add_client()
        yield local
        started = [p.pid for pod in mesh.pods.values() for p in pod.processes]
    # Whatever the test did, nothing of the mesh is left: not a namespace (and so no
    # nftables table, no process inside one), link or /etc/netns folder of its own, and
    # none of the processes it started.
    assert leftovers(mesh.id) == []
    assert not [p for p in started if Path(f"/proc/{p}").exists()]


def leftovers(mesh_id: str) -> list[str]:
    """What of the mesh `mesh_id` is still on the machine, found by its own names only:
    namespaces ml-ID-POD (and their /etc/netns folders), the bridge mlbID and the veths
    mlvID<n>. Other meshes and anyone else's namespaces and links are not looked at,
    whatever their names hold."""
    own_namespace = re.compile(rf"ml-{re.escape(mesh_id)}-.+")
    own_link = re.compile(rf"mlb{re.escape(mesh_id)}|mlv{re.escape(mesh_id)}\d+")
    found = [n for n in netns.names() if own_namespace.fullmatch(n)]
    found += [link for link in netns.links() if own_link.fullmatch(link)]
    if netns.NETNS_ETC_DIR.is_dir():
        found += [str(p) for p in netns.NETNS_ETC_DIR.iterdir() if own_namespace.fullmatch(p.name)]
    return found
