"""Keeps the webhook's certificate, without cert-manager, as istiod does.

The CA and the serving certificate live in one Secret in the control plane's own
namespace, so every replica serves the same certificate. The replica holding a
Lease writes it (makes it at first, renews the serving certificate in time) and
keeps the MutatingWebhookConfiguration's `caBundle` equal to the CA; the others
read it. Every pass runs on a thread (the `kubernetes` client blocks) and returns
what went wrong, if anything, with its result (for the control plane's problems).

Both are owned by the MutatingWebhookConfiguration (an ownerReference), so
deleting it (`helm uninstall`) has the garbage collector delete what the control
plane made at run time; without it, the keeper makes nothing and waits.

RBAC: get/update on that Secret and that Lease by name, create for both (create
cannot be narrowed to a name), get/patch on that MutatingWebhookConfiguration.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from meshlet.controlplane.sources.kube_client import read_or_none
from meshlet.controlplane.sources.kubernetes import describe_failure
from meshlet.inject import namespaces
from meshlet.inject.certs import KeyPair, issue_serving, make_ca, serving_is_good

log = logging.getLogger(__name__)

LEASE_SECONDS = 30
_CA_CERT, _CA_KEY, _CERT, _KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
_TLS = "kubernetes.io/tls"


def rbac_rules(namespace: str, secret: str, configuration: str) -> dict[str, list[dict[str, Any]]]:
    """What the webhook needs: a Role in `namespace` (its keeper's Secret and Lease), and
    cluster-wide rules (the configuration it keeps; the namespaces' labels it reads)."""
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
            },
            *namespaces.RBAC_RULES,
        ],
    }


@dataclass(frozen=True)
class KeeperConfig:
    namespace: str
    secret: str  # also the Lease's name
    configuration: str  # the MutatingWebhookConfiguration
    hosts: tuple[str, ...]  # what the serving certificate must name
    identity: str  # this replica, as the Lease's holder
    # Well inside the Lease's duration: a holder renews three times before it could lapse.
    interval: float = LEASE_SECONDS / 3


@dataclass(frozen=True)
class Pass:
    """What one pass found: the certificate to serve (None: none yet) and when to look again."""

    wait: float
    serving: KeyPair | None = None
    # What went wrong in this pass (empty: nothing), for the control plane's problems.
    problems: tuple[str, ...] = ()


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


def _certificates(bundle: bytes) -> list[bytes]:
    """The PEM certificates in a bundle, each with its end line."""
    end = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + end + b"\n" for part in bundle.split(end)[:-1]]


class NoConfiguration(Exception):
    """The MutatingWebhookConfiguration is not there (yet, or any more)."""


class CertificateKeeper:
    def __init__(
        self,
        api: k8s.ApiClient,
        config: KeeperConfig,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # Raw JSON in and out (_preload_content=False): no model objects, as the source.
        self._core: Any = k8s.CoreV1Api(api)
        self._leases: Any = k8s.CoordinationV1Api(api)
        self._webhooks: Any = k8s.AdmissionregistrationV1Api(api)
        self._server = str(api.configuration.host)
        self.config = config
        self._monotonic = monotonic
        self.holder = False
        # Lease expiry by our own clock, as client-go: when did its record last change?
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        # A pass and a release never overlap; nothing is taken once stopped.
        self._lock = threading.Lock()
        self._stopped = False

    def step(self, now: datetime.datetime | None = None) -> Pass:
        """One pass (on a thread). Never raises: what went wrong is in its `problems`."""
        with self._lock:
            if self._stopped:
                return Pass(self.config.interval)
            try:
                return self._step(now or _now())
            except NoConfiguration as exc:
                return Pass(min(self.config.interval, 2.0), None, (f"webhook certificate: {exc}",))
            except Exception as exc:  # an unreachable API server, RBAC refusing, ...
                problem = f"webhook certificate: {describe_failure(exc, self._server)} (retrying)"
                return Pass(min(self.config.interval, 5.0), None, (problem,))

    def _step(self, now: datetime.datetime) -> Pass:
        configuration = self._read_configuration()
        if configuration is None:
            # Not made yet, or deleted (`helm uninstall`: the garbage collector is deleting
            # the Secret and Lease it owned). Nothing is made without an owner, so nothing
            # is left behind, by this replica or by one started later.
            raise NoConfiguration(
                f"no MutatingWebhookConfiguration {self.config.configuration}: its Secret "
                "and Lease are made once it exists (waiting)"
            )
        owner = _owner_reference(configuration)
        secret = self._read_secret()
        if secret is not None and secret.get("type") not in (None, _TLS):
            raise ValueError(
                f"Secret {self.config.namespace}/{self.config.secret} is of type"
                f" {secret.get('type')}, not {_TLS}: delete it, and it is made again"
            )
        ca, serving = _pairs(secret)
        good = (
            ca is not None
            and serving is not None
            and serving_is_good(serving, ca, self.config.hosts, now)
        )
        self.holder = self._hold_lease(now, owner)
        new_ca = False
        if not good:
            if not self.holder:
                return Pass(2.0)  # the holder makes it; look again soon
            if not _usable_ca(ca, now):
                ca, new_ca = make_ca(now), True
                log.info("webhook: made a new CA")
            assert ca is not None
            serving = issue_serving(ca, self.config.hosts, now)
            if not self._write_secret(secret, ca, serving, owner):
                return Pass(1.0)  # someone else wrote it meanwhile: read theirs
            log.info("webhook: serving certificate for %s issued", ", ".join(self.config.hosts))
        assert ca is not None and serving is not None
        if good and self.holder and secret is not None and _needs_owner(secret, owner):
            # Of an older version, or of a configuration deleted and made again (a new uid).
            self._write_secret(secret, ca, serving, owner)
        if self.holder:
            self._keep_ca_bundle(configuration, ca, new_ca)
        return Pass(self.config.interval, serving)

    def stop(self) -> None:
        """No pass takes anything from now on; give the Lease up (a replica shutting down),
        so another takes it at once instead of when it lapses, as client-go's
        ReleaseOnCancel. Waits for a pass still running."""
        with self._lock:
            self._stopped = True
            if self.holder:
                self._release()

    # --- the Secret ---------------------------------------------------------------

    def _read_secret(self) -> dict[str, Any] | None:
        return read_or_none(
            lambda: self._core.read_namespaced_secret(
                self.config.secret, self.config.namespace, _preload_content=False
            )
        )

    def _write_secret(
        self,
        old: Mapping[str, Any] | None,
        ca: KeyPair,
        serving: KeyPair,
        owner: Mapping[str, Any],
    ) -> bool:
        data = {
            _CA_CERT: _b64(ca.cert),
            _CA_KEY: _b64(ca.key),
            _CERT: _b64(serving.cert),
            _KEY: _b64(serving.key),
        }
        try:
            if old is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": _TLS,
                    "metadata": _owned(
                        {
                            "name": self.config.secret,
                            "namespace": self.config.namespace,
                            "labels": {"app.kubernetes.io/managed-by": "meshlet"},
                        },
                        owner,
                    ),
                    "data": data,
                }
                self._core.create_namespaced_secret(
                    self.config.namespace, body, _preload_content=False
                )
            else:
                # Its metadata kept (labels, owners, the version read: a concurrent write
                # makes this a 409, not a lost update); only the data is ours.
                body = {
                    **old,
                    "metadata": _owned(old.get("metadata") or {}, owner),
                    "data": {**(old.get("data") or {}), **data},
                }
                self._core.replace_namespaced_secret(
                    self.config.secret, self.config.namespace, body, _preload_content=False
                )
        except k8s.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # --- the Lease ------------------------------------------------------------------

    def _hold_lease(self, now: datetime.datetime, owner: Mapping[str, Any]) -> bool:
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
                "metadata": _owned({"name": name, "namespace": namespace}, owner),
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
        holder = str(current.get("holderIdentity") or "")
        mine = holder == self.config.identity
        if not mine and holder and not self._lapsed(current):
            return False
        lease["spec"] = {**current, **spec}
        lease["metadata"] = _owned(lease.get("metadata") or {}, owner)
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

    def _lapsed(self, spec: Mapping[str, Any]) -> bool:
        """Whether another holder let the Lease lapse: its record has not changed for its
        duration by our clock (clocks of two machines are never compared)."""
        record = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))
        now = self._monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
            return False
        duration = int(spec.get("leaseDurationSeconds") or LEASE_SECONDS)
        return now - self._observed_at > duration

    def _release(self) -> None:
        name, namespace = self.config.secret, self.config.namespace
        try:
            response = self._leases.read_namespaced_lease(name, namespace, _preload_content=False)
            lease = json.loads(response.data)
            if (lease.get("spec") or {}).get("holderIdentity") != self.config.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            self._leases.replace_namespaced_lease(name, namespace, lease, _preload_content=False)
            self.holder = False
        except Exception as exc:  # it lapses by itself anyway
            log.info("webhook: could not release the Lease (%s); it lapses by itself", exc)

    # --- the webhook configuration --------------------------------------------------

    def _read_configuration(self) -> dict[str, Any] | None:
        try:
            response = self._webhooks.read_mutating_webhook_configuration(
                self.config.configuration, _preload_content=False
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                log.debug(
                    "webhook: no MutatingWebhookConfiguration %s yet", self.config.configuration
                )
                return None
            raise
        found: dict[str, Any] = json.loads(response.data)
        return found

    def _keep_ca_bundle(self, configuration: Mapping[str, Any], ca: KeyPair, new_ca: bool) -> None:
        """Every webhook's caBundle trusts our CA. A new CA is put before the old one, so
        replicas still serving a certificate of the old CA are trusted until they move."""
        ours = ca.cert.strip() + b"\n"
        patch = []
        for i, hook in enumerate(configuration.get("webhooks") or []):
            try:
                current = base64.b64decode((hook.get("clientConfig") or {}).get("caBundle") or "")
            except (ValueError, TypeError):
                current = b""
            trusted = _certificates(current)
            if ours in trusted and not (new_ca and trusted[0] != ours):
                continue
            bundle = b"".join([ours, *[c for c in trusted if c != ours][:1]]) if new_ca else ours
            patch.append(
                {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": _b64(bundle)}
            )
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


def _owner_reference(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration (as the API server returned it: it has a uid) as the owner of
    the Secret and the Lease. No blockOwnerDeletion: deleting the configuration must
    never wait on them."""
    meta = configuration.get("metadata") or {}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "name": meta.get("name"),
        "uid": meta.get("uid", ""),
    }


def _needs_owner(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return all(o.get("uid") != owner["uid"] for o in owners)


def _owned(meta: Mapping[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata with `owner` among its ownerReferences (others kept)."""
    if not _needs_owner({"metadata": meta}, owner):
        return dict(meta)
    # An owner of the same name but another uid was deleted and made again: replace it.
    kept = [o for o in meta.get("ownerReferences") or [] if o.get("kind") != owner["kind"]]
    return {**meta, "ownerReferences": [*kept, dict(owner)]}
