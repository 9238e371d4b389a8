"""A whole local mesh for an end-to-end test: backends, one service, the control plane
and a client pod with its sidecar, checked to leave nothing behind."""

from __future__ import annotations

import contextlib
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
    # nftables table, no process inside one), link or /etc/netns folder.
    assert not [n for n in netns.names() if mesh.id in n]
    assert not [link for link in netns.links() if mesh.id in link]
    assert not list(netns.NETNS_ETC_DIR.glob(f"*{mesh.id}*"))
    assert not [p for p in started if Path(f"/proc/{p}").exists()]
