"""Keeps the webhook's certificate, without cert-manager, as istiod does.

The CA and the serving certificate live in one Secret in the control plane's own
namespace, so every replica serves the same certificate. The replica holding a
Lease writes it (makes it at first, renews the serving certificate in time) and
keeps the MutatingWebhookConfiguration's `caBundle` equal to the CA; the others
read it. Every pass runs on a thread (the `kubernetes` client blocks) and says
what went wrong, if anything, through `report` (the control plane's problems).

RBAC: get/update on that Secret and that Lease by name, create for both (create
cannot be narrowed to a name), get/patch on that MutatingWebhookConfiguration.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from meshlet.controlplane.sources.kubernetes import describe_failure
from meshlet.inject.certs import KeyPair, issue_serving, make_ca, serving_is_good
from meshlet.inject.serving import ServingCertificate

log = logging.getLogger(__name__)

LEASE_SECONDS = 30
_CA_CERT, _CA_KEY, _CERT, _KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"


def rbac_rules(namespace: str, secret: str, configuration: str) -> dict[str, list[dict[str, Any]]]:
    """What the keeper needs: a Role in `namespace`, and cluster-wide rules."""
    return {
        "namespaced": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [secret],
                "verbs": ["get", "update"],
            },
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [secret],
                "verbs": ["get", "update"],
            },
        ],
        "cluster": [
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": [configuration],
                "verbs": ["get", "patch"],
            }
        ],
    }


@dataclass(frozen=True)
class KeeperConfig:
    namespace: str
    secret: str  # also the Lease's name
    configuration: str  # the MutatingWebhookConfiguration
    hosts: tuple[str, ...]  # what the serving certificate must name
    identity: str  # this replica, as the Lease's holder
    interval: float = 30.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pairs(secret: Mapping[str, Any] | None) -> tuple[KeyPair | None, KeyPair | None]:
    data = (secret or {}).get("data") or {}
    try:
        raw = {k: base64.b64decode(data[k]) for k in (_CA_CERT, _CA_KEY, _CERT, _KEY) if k in data}
    except (ValueError, TypeError):
        return None, None
    ca = KeyPair(raw[_CA_CERT], raw[_CA_KEY]) if {_CA_CERT, _CA_KEY} <= raw.keys() else None
    serving = KeyPair(raw[_CERT], raw[_KEY]) if {_CERT, _KEY} <= raw.keys() else None
    return ca, serving


def _usable_ca(ca: KeyPair | None, now: datetime.datetime) -> bool:
    if ca is None:
        return False
    try:
        issue_serving(ca, ["probe"], now)
    except ValueError:
        return False
    return True


class CertificateKeeper:
    def __init__(
        self,
        api: k8s.ApiClient,
        config: KeeperConfig,
        serving: ServingCertificate,
        report: Callable[[Sequence[str]], None],
    ) -> None:
        # Raw JSON in and out (_preload_content=False): no model objects, as the source.
        self._core: Any = k8s.CoreV1Api(api)
        self._leases: Any = k8s.CoordinationV1Api(api)
        self._webhooks: Any = k8s.AdmissionregistrationV1Api(api)
        self._server = str(api.configuration.host)
        self.config = config
        self.serving = serving
        self._report = report
        self.ca: KeyPair | None = None
        self.holder = False

    def step(self, now: datetime.datetime | None = None) -> float:
        """One pass; the seconds until the next. Never raises: problems are reported."""
        now = now or _now()
        try:
            wait = self._step(now)
        except Exception as exc:  # an unreachable API server, RBAC refusing, ...
            problem = describe_failure(exc, self._server)
            self._report([f"webhook certificate: {problem} (retrying)"])
            return min(self.config.interval, 5.0)
        self._report([])
        return wait

    def _step(self, now: datetime.datetime) -> float:
        secret = self._read_secret()
        ca, serving = _pairs(secret)
        good = (
            ca is not None
            and serving is not None
            and serving_is_good(serving, ca, self.config.hosts, now)
        )
        self.holder = self._hold_lease(now)
        if not good:
            if not self.holder:
                return 2.0  # the holder makes it; look again soon
            if not _usable_ca(ca, now):
                ca = make_ca(now)
                log.info("webhook: made a new CA")
            assert ca is not None
            serving = issue_serving(ca, self.config.hosts, now)
            if not self._write_secret(secret, ca, serving):
                return 1.0  # someone else wrote it meanwhile: read theirs
            log.info("webhook: serving certificate for %s issued", ", ".join(self.config.hosts))
        assert ca is not None and serving is not None
        if self.serving.load(serving):
            log.info(
                "webhook: serving the certificate of Secret %s/%s",
                self.config.namespace,
                self.config.secret,
            )
        self.ca = ca
        if self.holder:
            self._keep_ca_bundle(ca)
        return self.config.interval

    # --- the Secret ---------------------------------------------------------------

    def _read_secret(self) -> dict[str, Any] | None:
        try:
            response = self._core.read_namespaced_secret(
                self.config.secret, self.config.namespace, _preload_content=False
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        found: dict[str, Any] = json.loads(response.data)
        return found

    def _write_secret(self, old: Mapping[str, Any] | None, ca: KeyPair, serving: KeyPair) -> bool:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": self.config.secret,
                "namespace": self.config.namespace,
                "labels": {"app.kubernetes.io/managed-by": "meshlet"},
            },
            "data": {
                _CA_CERT: _b64(ca.cert),
                _CA_KEY: _b64(ca.key),
                _CERT: _b64(serving.cert),
                _KEY: _b64(serving.key),
            },
        }
        try:
            if old is None:
                self._core.create_namespaced_secret(
                    self.config.namespace, body, _preload_content=False
                )
            else:
                # The version read: a concurrent write makes this a 409, not a lost update.
                body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                self._core.replace_namespaced_secret(
                    self.config.secret, self.config.namespace, body, _preload_content=False
                )
        except k8s.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # --- the Lease ------------------------------------------------------------------

    def _hold_lease(self, now: datetime.datetime) -> bool:
        """Take or renew the Lease; True when this replica holds it now."""
        name, namespace = self.config.secret, self.config.namespace
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": stamp,
        }
        try:
            response = self._leases.read_namespaced_lease(name, namespace, _preload_content=False)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            body = {
                "metadata": {"name": name, "namespace": namespace},
                "spec": {**spec, "acquireTime": stamp},
            }
            try:
                self._leases.create_namespaced_lease(namespace, body, _preload_content=False)
            except k8s.ApiException as again:
                if again.status == 409:
                    return False
                raise
            return True
        lease = json.loads(response.data)
        current = lease.get("spec") or {}
        mine = current.get("holderIdentity") == self.config.identity
        free = not current.get("holderIdentity") or _expired(current, now)
        if not mine and not free:
            return False
        lease["spec"] = {**current, **spec}
        if not mine:
            lease["spec"]["acquireTime"] = stamp
            lease["spec"]["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        try:
            self._leases.replace_namespaced_lease(name, namespace, lease, _preload_content=False)
        except k8s.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def release(self) -> None:
        """Give the Lease up (a replica shutting down), so another takes it at once
        instead of after it expires; as client-go's ReleaseOnCancel."""
        if not self.holder:
            return
        name, namespace = self.config.secret, self.config.namespace
        try:
            response = self._leases.read_namespaced_lease(name, namespace, _preload_content=False)
            lease = json.loads(response.data)
            if (lease.get("spec") or {}).get("holderIdentity") != self.config.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            self._leases.replace_namespaced_lease(name, namespace, lease, _preload_content=False)
            self.holder = False
        except Exception as exc:  # it expires by itself anyway
            log.info("webhook: could not release the Lease (%s); it expires by itself", exc)

    # --- the webhook configuration --------------------------------------------------

    def _keep_ca_bundle(self, ca: KeyPair) -> None:
        try:
            response = self._webhooks.read_mutating_webhook_configuration(
                self.config.configuration, _preload_content=False
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                log.debug(
                    "webhook: no MutatingWebhookConfiguration %s yet", self.config.configuration
                )
                return
            raise
        configuration = json.loads(response.data)
        bundle = _b64(ca.cert)
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i, hook in enumerate(configuration.get("webhooks") or [])
            if (hook.get("clientConfig") or {}).get("caBundle") != bundle
        ]
        if patch:
            # Guarded by the version read: a concurrent change makes the patch fail, not clobber.
            guard = {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": configuration["metadata"]["resourceVersion"],
            }
            self._webhooks.patch_mutating_webhook_configuration(
                self.config.configuration,
                [guard, *patch],
                _content_type="application/json-patch+json",
                _preload_content=False,
            )
            log.info(
                "webhook: caBundle of %s set (%d webhooks)", self.config.configuration, len(patch)
            )


def _expired(spec: Mapping[str, Any], now: datetime.datetime) -> bool:
    renewed = spec.get("renewTime")
    if not isinstance(renewed, str):
        return True
    try:
        at = datetime.datetime.fromisoformat(renewed.replace("Z", "+00:00"))
    except ValueError:
        return True
    duration = int(spec.get("leaseDurationSeconds") or LEASE_SECONDS)
    return now > at + datetime.timedelta(seconds=duration)
