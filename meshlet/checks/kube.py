"""The cluster: the API server, RBAC, the webhook configuration and its CA.

`--pre` (before install): the API server, its version, and whether the caller may
create what the chart installs and grant what it grants the control plane.
`--cluster` (after): the control plane's ServiceAccount may do what it needs, the
MutatingWebhookConfiguration calls the control plane's Service, and its caBundle
verifies the serving certificate the control plane keeps in its Secret.

Needs the `control-plane` extra (kubernetes, cryptography).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from kubernetes import client as k8s

from meshlet.checks import Result, failed, passed
from meshlet.controlplane.sources.kube_client import (
    KubeClient,
    KubeConfigError,
    load_client,
    read_or_none,
)
from meshlet.controlplane.sources.kubernetes import RBAC_RULES, describe_failure
from meshlet.inject import keeper

API_NAME = "the Kubernetes API server is reachable"
VERSION_NAME = "Kubernetes is new enough for EndpointSlices (discovery.k8s.io/v1, 1.21+)"
CREATE_NAME = "you may create what the chart installs"
GRANT_NAME = "you may grant what the chart grants the control plane"
RBAC_NAME = "the control plane's ServiceAccount may do what it needs"
WEBHOOK_NAME = "the MutatingWebhookConfiguration exists"
TARGET_NAME = "the webhook calls the control plane's Service"
CA_NAME = "the webhook's caBundle verifies the control plane's certificate"
MIN_VERSION = (1, 21)
_TIMEOUT = 10.0
_MAX_LISTED = 6

# --- the API server ------------------------------------------------------------------


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
        response = versions.get_code(_preload_content=False, _request_timeout=_TIMEOUT)
        version = json.loads(response.data)
    except Exception as exc:  # unreachable, TLS, 401: said in words
        return client, ApiProbe(client.server, client.origin, error=_failure(exc, client.server))
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


# --- access ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    verb: str
    group: str
    resource: str
    namespace: str = ""  # "" cluster-wide
    name: str = ""  # a resourceName, "" for any

    def text(self) -> str:
        what = self.resource if not self.group else f"{self.resource}.{self.group}"
        if self.name:
            what += f"/{self.name}"
        return f"{self.verb} {what}" + (f" in {self.namespace}" if self.namespace else "")

    def attributes(self) -> dict[str, str]:
        found = {"verb": self.verb, "group": self.group, "resource": self.resource}
        if self.namespace:
            found["namespace"] = self.namespace
        if self.name:
            found["name"] = self.name
        return found


@dataclass(frozen=True)
class Answer:
    access: Access
    allowed: bool
    reason: str = ""  # the authorizer's, or why it could not be asked


def chart_objects(namespace: str) -> tuple[Access, ...]:
    """`create` of every kind the chart installs (helm/meshlet/templates), and the namespace."""
    cluster = (
        ("", "namespaces"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    )
    namespaced = (
        ("", "serviceaccounts"),
        ("", "configmaps"),
        ("", "services"),
        ("apps", "deployments"),
        ("policy", "poddisruptionbudgets"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
    )
    return (
        *(Access("create", g, r) for g, r in cluster),
        *(Access("create", g, r, namespace) for g, r in namespaced),
    )


def _expand(rules: Iterable[Mapping[str, Any]], namespace: str) -> list[Access]:
    found = []
    for rule in rules:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        found.append(Access(verb, group, resource, namespace, name))
    return found


def control_plane_access(namespace: str, configuration: str) -> tuple[Access, ...]:
    """What the chart's ClusterRoles and Role give the control plane: the source's rules
    cluster-wide, the webhook configuration's, and its Secret's and Lease's in `namespace`."""
    webhook = keeper.rbac_rules(namespace, f"{configuration}-tls", configuration)
    return (
        *_expand(RBAC_RULES, ""),
        *_expand(webhook["cluster"], ""),
        *_expand(webhook["namespaced"], namespace),
    )


def escalation(namespace: str) -> tuple[Access, ...]:
    """What lets one grant more than one holds: `escalate` on roles and `bind`."""
    group = "rbac.authorization.k8s.io"
    return (
        Access("escalate", group, "clusterroles"),
        Access("escalate", group, "roles", namespace),
        Access("bind", group, "clusterroles"),
        Access("bind", group, "roles", namespace),
    )


def service_account_user(namespace: str, account: str) -> tuple[str, list[str]]:
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    return f"system:serviceaccount:{namespace}:{account}", [*groups, "system:authenticated"]


def ask(
    api: k8s.ApiClient, accesses: Sequence[Access], subject: tuple[str, list[str]] | None = None
) -> list[Answer]:
    """One SelfSubjectAccessReview (subject None) or SubjectAccessReview per access."""
    authz: Any = k8s.AuthorizationV1Api(api)
    answers = []
    for access in accesses:
        spec: dict[str, Any] = {"resourceAttributes": access.attributes()}
        try:
            if subject is None:
                body = {"kind": "SelfSubjectAccessReview", "spec": spec}
                response = authz.create_self_subject_access_review(
                    {"apiVersion": "authorization.k8s.io/v1", **body},
                    _preload_content=False,
                    _request_timeout=_TIMEOUT,
                )
            else:
                spec |= {"user": subject[0], "groups": subject[1]}
                body = {"kind": "SubjectAccessReview", "spec": spec}
                response = authz.create_subject_access_review(
                    {"apiVersion": "authorization.k8s.io/v1", **body},
                    _preload_content=False,
                    _request_timeout=_TIMEOUT,
                )
            status = json.loads(response.data).get("status") or {}
        except Exception as exc:
            answers.append(Answer(access, False, f"could not ask: {_failure(exc, '')}"))
            continue
        reason = str(status.get("reason") or status.get("evaluationError") or "")
        answers.append(Answer(access, bool(status.get("allowed")), reason))
    return answers


def _denied(answers: Sequence[Answer]) -> str:
    bad = [a for a in answers if not a.allowed]
    shown = [
        a.access.text() + (f" ({a.reason})" if a.reason.startswith("could not") else "")
        for a in bad[:_MAX_LISTED]
    ]
    more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    return "not allowed: " + ", ".join(shown) + more


def check_can_create(answers: Sequence[Answer]) -> Result:
    if all(a.allowed for a in answers):
        return passed(CREATE_NAME, f"{len(answers)} kinds")
    return failed(
        CREATE_NAME,
        _denied(answers),
        "install as a cluster admin (an account bound to the cluster-admin ClusterRole)",
    )


def check_can_grant(held: Sequence[Answer], escalate: Sequence[Answer]) -> Result:
    """RBAC lets one grant only what one holds, unless allowed to escalate and bind."""
    if all(a.allowed for a in held):
        return passed(GRANT_NAME, f"you hold all {len(held)} of its permissions")
    if escalate and all(a.allowed for a in escalate):
        return passed(GRANT_NAME, "you may escalate and bind roles")
    return failed(
        GRANT_NAME,
        _denied(held),
        "RBAC lets you grant only what you hold: install as a cluster admin",
    )


def check_control_plane_rbac(answers: Sequence[Answer], namespace: str, account: str) -> Result:
    name = f"{RBAC_NAME} ({namespace}/{account})"
    if all(a.allowed for a in answers):
        return passed(name, f"{len(answers)} permissions")
    return failed(
        name,
        _denied(answers),
        "its ClusterRoles, Role and bindings come with the chart: helm upgrade (or reinstall) "
        "it, and check --system-namespace and --service-account name its release",
    )


# --- the webhook configuration and its Secret ----------------------------------------------


@dataclass(frozen=True)
class WebhookProbe:
    name: str
    configuration: Mapping[str, Any] | None = None
    error: str = ""  # reading it failed, other than not being there
    secret_name: str = ""  # namespace/name
    secret: Mapping[str, Any] | None = None
    secret_error: str = ""


def probe_webhook(api: k8s.ApiClient, name: str, namespace: str) -> WebhookProbe:
    secret_name = f"{namespace}/{name}-tls"
    try:
        configuration = read_or_none(
            lambda: k8s.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(
                name, _preload_content=False, _request_timeout=_TIMEOUT
            )
        )
    except Exception as exc:
        return WebhookProbe(name, error=_failure(exc, str(api.configuration.host)))
    secret, secret_error = None, ""
    try:
        secret = read_or_none(
            lambda: k8s.CoreV1Api(api).read_namespaced_secret(
                f"{name}-tls", namespace, _preload_content=False, _request_timeout=_TIMEOUT
            )
        )
    except Exception as exc:
        secret_error = _failure(exc, str(api.configuration.host))
    return WebhookProbe(name, configuration, "", secret_name, secret, secret_error)


def check_webhook(probe: WebhookProbe) -> Result:
    name = f"{WEBHOOK_NAME} ({probe.name})"
    if probe.error:
        return failed(name, f"could not read it: {probe.error}", "")
    if probe.configuration is None:
        return failed(
            name,
            "there is none by that name",
            "install the chart with webhook.enabled, or give its name with --webhook-configuration",
        )
    hooks = probe.configuration.get("webhooks") or []
    if not hooks:
        return failed(name, "it has no webhooks", "helm upgrade the release to restore it")
    return passed(name, f"{len(hooks)} webhook{'s' if len(hooks) != 1 else ''}")


def _hooks(probe: WebhookProbe) -> list[Mapping[str, Any]]:
    return list((probe.configuration or {}).get("webhooks") or [])


def check_target(probe: WebhookProbe, namespace: str, service: str) -> Result:
    name = f"{TARGET_NAME} ({namespace}/{service})"
    if probe.configuration is None:
        return failed(name, "not checked: no webhook configuration", "")
    problems, urls = [], []
    for hook in _hooks(probe):
        config = hook.get("clientConfig") or {}
        target = config.get("service")
        if target:
            at = f"{target.get('namespace')}/{target.get('name')}"
            if (target.get("namespace"), target.get("name")) != (namespace, service):
                problems.append(f"{hook.get('name')} calls the Service {at}")
        elif config.get("url"):
            urls.append(f"{hook.get('name')} by URL {config['url']}")
        else:
            problems.append(f"{hook.get('name')} has neither a service nor a url")
    if problems:
        return failed(
            name,
            "; ".join(problems),
            "helm upgrade the release, or give --system-namespace and --webhook-service "
            "of the release that runs",
        )
    if urls:  # the chart's webhook.url: a control plane outside the cluster
        return passed(name, "; ".join(urls) + " (webhook.url)")
    return passed(name)


def _certificates(bundle: bytes) -> list[x509.Certificate]:
    found = []
    for block in re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", bundle, re.S
    ):
        try:
            found.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return found


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    found = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    return found | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _host(hook: Mapping[str, Any]) -> str:
    """The name the API server checks the certificate against for this webhook."""
    config = hook.get("clientConfig") or {}
    target = config.get("service")
    if target:
        return f"{target.get('name')}.{target.get('namespace')}.svc"
    host = urllib.parse.urlsplit(str(config.get("url") or "")).hostname or ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def check_ca_bundle(probe: WebhookProbe, now: datetime.datetime) -> Result:
    """Every webhook's caBundle signed the serving certificate (tls.crt) in the Secret, the
    certificate is valid now and names the host the API server calls."""
    name = f"{CA_NAME} (Secret {probe.secret_name})"
    hint = (
        "the control plane keeps both, and puts its CA back into the caBundle within "
        "seconds: is it running with the webhook? Its /debug/problems says what stops it"
    )
    if probe.configuration is None:
        return failed(name, "not checked: no webhook configuration", "")
    if probe.secret_error:
        return failed(name, f"could not read the Secret: {probe.secret_error}", "")
    if probe.secret is None:
        return failed(name, "there is no such Secret", hint)
    data = probe.secret.get("data") or {}
    try:
        serving = x509.load_pem_x509_certificate(base64.b64decode(data.get("tls.crt") or ""))
    except (ValueError, binascii.Error):
        return failed(name, "the Secret holds no PEM certificate in tls.crt", hint)
    if now < serving.not_valid_before_utc or now >= serving.not_valid_after_utc:
        return failed(
            name,
            f"its certificate is valid only from {serving.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"to {serving.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            hint,
        )
    problems = []
    for hook in _hooks(probe):
        label = hook.get("name")
        raw = (hook.get("clientConfig") or {}).get("caBundle") or ""
        try:
            bundle = _certificates(base64.b64decode(raw))
        except (ValueError, binascii.Error):
            bundle = []
        if not bundle:
            problems.append(f"{label} has no caBundle" if not raw else f"{label}: no CA in it")
            continue
        if not any(_signed_by(serving, ca) for ca in bundle):
            subjects = ", ".join(ca.subject.rfc4514_string() for ca in bundle)
            problems.append(
                f"{label}: the certificate (issued by {serving.issuer.rfc4514_string()}) "
                f"is not signed by its caBundle ({subjects})"
            )
            continue
        host = _host(hook)
        if host and host not in _names(serving):
            problems.append(f"{label}: the certificate does not name {host}")
    if problems:
        return failed(name, "; ".join(problems), hint)
    return passed(name, f"valid until {serving.not_valid_after_utc:%Y-%m-%d}")


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --- all of them -------------------------------------------------------------------------


def _failure(exc: Exception, server: str) -> str:
    return describe_failure(exc, server)


def _not_tried(names: Sequence[str]) -> tuple[Result, ...]:
    return tuple(failed(n, "not tried: the API server is not reachable") for n in names)


def pre_checks(kubeconfig: str | None, namespace: str, configuration: str) -> tuple[Result, ...]:
    client, probe = connect(kubeconfig)
    api_results = (check_api(probe), check_version(probe))
    if client is None or probe.version is None:
        return (*api_results, *_not_tried((CREATE_NAME, GRANT_NAME)))
    creates = ask(client.api, chart_objects(namespace))
    held = ask(client.api, control_plane_access(namespace, configuration))
    escalate = [] if all(a.allowed for a in held) else ask(client.api, escalation(namespace))
    return (*api_results, check_can_create(creates), check_can_grant(held, escalate))


def cluster_checks(
    kubeconfig: str | None,
    namespace: str,
    account: str,
    service: str,
    configuration: str,
    now: datetime.datetime | None = None,
) -> tuple[Result, ...]:
    client, probe = connect(kubeconfig)
    api_results = (check_api(probe), check_version(probe))
    if client is None or probe.version is None:
        names = (f"{RBAC_NAME} ({namespace}/{account})", WEBHOOK_NAME, TARGET_NAME, CA_NAME)
        return (*api_results, *_not_tried(names))
    answers = ask(
        client.api,
        control_plane_access(namespace, configuration),
        service_account_user(namespace, account),
    )
    webhook = probe_webhook(client.api, configuration, namespace)
    return (
        *api_results,
        check_control_plane_rbac(answers, namespace, account),
        check_webhook(webhook),
        check_target(webhook, namespace, service),
        check_ca_bundle(webhook, now or datetime.datetime.now(datetime.UTC)),
    )
