"""The Kubernetes API server: reachable with the configuration given, and new enough.

Both `--pre` and `--cluster` start here; the other cluster checks (kube_access,
kube_webhook) ask through the client `connect` returns. Needs the `control-plane`
extra (kubernetes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from meshlet.checks import Result, failed, passed
from meshlet.controlplane.sources.kube_client import KubeClient, KubeConfigError, load_client
from meshlet.controlplane.sources.kubernetes import describe_failure

API_NAME = "the Kubernetes API server is reachable"
VERSION_NAME = "Kubernetes is new enough for EndpointSlices (discovery.k8s.io/v1, 1.21+)"
MIN_VERSION = (1, 21)
TIMEOUT = 10.0  # seconds, for each request of the cluster checks


@dataclass(frozen=True)
class ApiProbe:
    server: str = ""
    origin: str = ""  # where the configuration came from
    version: Mapping[str, Any] | None = None  # /version's body
    error: str = ""
    config_error: str = ""  # no usable configuration at all


def connect(kubeconfig: str | None) -> tuple[KubeClient | None, ApiProbe]:
    """The client (None when there is no configuration) and what /version said."""
    try:
        client = load_client(kubeconfig)
    except KubeConfigError as exc:
        return None, ApiProbe(config_error=str(exc))
    try:
        versions: Any = k8s.VersionApi(client.api)
        response = versions.get_code(_preload_content=False, _request_timeout=TIMEOUT)
        version = json.loads(response.data)
    except Exception as exc:  # unreachable, TLS, 401: said in words
        return client, ApiProbe(
            client.server, client.origin, error=describe_failure(exc, client.server)
        )
    return client, ApiProbe(client.server, client.origin, version)


def check_api(probe: ApiProbe) -> Result:
    if probe.config_error:
        return failed(
            API_NAME,
            probe.config_error.replace(", or give --manifests PATH to serve a folder instead", ""),
            "give --kubeconfig PATH, set KUBECONFIG, or run in a pod with a service account",
        )
    if probe.version is None:
        return failed(
            API_NAME,
            probe.error,
            f"is {probe.server} the right server, and are the credentials of {probe.origin} valid?",
        )
    return passed(API_NAME, f"{probe.server}, {probe.origin}")


def check_version(probe: ApiProbe) -> Result:
    if probe.version is None:
        return failed(VERSION_NAME, "not asked: the API server is not reachable", "")
    git_version = str(probe.version.get("gitVersion") or "")
    found = _major_minor(probe.version)
    if found is None:
        return failed(VERSION_NAME, f"cannot tell the version from {dict(probe.version)}", "")
    if found < MIN_VERSION:
        return failed(
            VERSION_NAME,
            f"{git_version or f'{found[0]}.{found[1]}'} is older than "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]}",
            "upgrade the cluster: meshlet watches discovery.k8s.io/v1 EndpointSlices",
        )
    return passed(VERSION_NAME, git_version or f"{found[0]}.{found[1]}")


def _major_minor(version: Mapping[str, Any]) -> tuple[int, int] | None:
    major = re.match(r"\d+", str(version.get("major") or ""))
    minor = re.match(r"\d+", str(version.get("minor") or ""))
    if major and minor:
        return int(major.group()), int(minor.group())
    match = re.match(r"v?(\d+)\.(\d+)", str(version.get("gitVersion") or ""))
    return (int(match.group(1)), int(match.group(2))) if match else None
