"""The MutatingWebhookConfiguration (`--cluster`): it exists, calls the control plane's
Service, and its caBundle verifies the serving certificate the control plane keeps in
its Secret. Needs the `control-plane` extra (kubernetes, cryptography).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from kubernetes import client as k8s

from meshlet.checks import Result, failed, passed
from meshlet.checks.kube_api import TIMEOUT
from meshlet.controlplane.sources.kube_client import read_or_none
from meshlet.controlplane.sources.kubernetes import describe_failure

WEBHOOK_NAME = "the MutatingWebhookConfiguration exists"
TARGET_NAME = "the webhook calls the control plane's Service"
CA_NAME = "the webhook's caBundle verifies the control plane's certificate"


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
                name, _preload_content=False, _request_timeout=TIMEOUT
            )
        )
    except Exception as exc:
        return WebhookProbe(name, error=describe_failure(exc, str(api.configuration.host)))
    secret, secret_error = None, ""
    try:
        secret = read_or_none(
            lambda: k8s.CoreV1Api(api).read_namespaced_secret(
                f"{name}-tls", namespace, _preload_content=False, _request_timeout=TIMEOUT
            )
        )
    except Exception as exc:
        secret_error = describe_failure(exc, str(api.configuration.host))
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
