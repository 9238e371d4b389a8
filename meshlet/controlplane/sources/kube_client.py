"""Where the Kubernetes API is and who we are to it: an API client from the usual places.

The order of controller-runtime's config loader: `--kubeconfig`, then the
`KUBECONFIG` variable, then the pod's service account (in-cluster), then
`~/.kube/config`. Nothing here talks to the API server: a server that is down is
the source's business (it retries), a missing or broken config is the user's
(a clear message at start-up).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.config import incluster_config, kube_config
from kubernetes.config.config_exception import ConfigException

# Where the kubelet mounts a pod's service-account token and the cluster's CA.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeConfigError(Exception):
    """No usable configuration: says what was tried and what was wrong."""


@dataclass(frozen=True)
class KubeClient:
    api: k8s.ApiClient
    # How it was found, for the log: "kubeconfig /root/.kube/config", "in-cluster".
    origin: str

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)


def load_client(
    kubeconfig: str | None,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> KubeClient:
    if kubeconfig:
        return _from_kubeconfig(kubeconfig, "--kubeconfig")
    if environ.get("KUBECONFIG"):
        return _from_kubeconfig(environ["KUBECONFIG"], "KUBECONFIG")
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return _in_cluster(environ, service_account_dir)
    home = Path(environ.get("HOME") or os.path.expanduser("~")) / ".kube" / "config"
    if home.is_file():
        return _from_kubeconfig(str(home), "~/.kube/config")
    raise KubeConfigError(
        "no Kubernetes configuration: give --kubeconfig PATH (or KUBECONFIG), run in a pod"
        " with a service account, or give --manifests PATH to serve a folder instead"
    )


def _from_kubeconfig(path: str, where: str) -> KubeClient:
    configuration = k8s.Configuration()
    try:
        # persist_config=False: never write refreshed credentials back to the user's file.
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise KubeConfigError(f"{where} {path}: {exc}") from None
    return KubeClient(k8s.ApiClient(configuration), f"kubeconfig {path}")


def _in_cluster(environ: Mapping[str, str], folder: str) -> KubeClient:
    configuration = k8s.Configuration()
    loader = incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=os.path.join(folder, "token"),
        cert_filename=os.path.join(folder, "ca.crt"),
        environ=environ,
    )
    try:
        # The token is read again every minute: projected tokens are rotated.
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as exc:
        raise KubeConfigError(f"in-cluster configuration ({folder}): {exc}") from None
    return KubeClient(k8s.ApiClient(configuration), f"in-cluster service account ({folder})")


def read_or_none(call: Callable[[], Any]) -> dict[str, Any] | None:
    """The object a read (`_preload_content=False`) returns, or None when it is not there
    (404); other API errors are raised."""
    try:
        response = call()
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    found: dict[str, Any] = json.loads(response.data)
    return found
