"""The cluster checks of `--pre` and `--cluster`, in their sections.

`--pre` (before install): the API server, its version, and whether the caller may
create what the chart installs and grant what it grants the control plane.
`--cluster` (after): the control plane's ServiceAccount may do what it needs, the
MutatingWebhookConfiguration calls the control plane's Service, and its caBundle
verifies the serving certificate the control plane keeps in its Secret.

The checks and their probes are in kube_api (the API server), kube_access (RBAC) and
kube_webhook (the webhook configuration and its CA); this module runs them in order
and names the section of each. Needs the `control-plane` extra (kubernetes,
cryptography).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from meshlet.checks import Result, Section, failed
from meshlet.checks.kube_access import (
    CREATE_NAME,
    GRANT_NAME,
    RBAC_NAME,
    ask,
    chart_objects,
    check_can_create,
    check_can_grant,
    check_control_plane_rbac,
    control_plane_access,
    escalation,
    service_account_user,
)
from meshlet.checks.kube_api import check_api, check_version, connect
from meshlet.checks.kube_webhook import (
    CA_NAME,
    TARGET_NAME,
    WEBHOOK_NAME,
    check_ca_bundle,
    check_target,
    check_webhook,
    probe_webhook,
)

API_SECTION = "kubernetes-api"
PRE_INSTALL_SECTION = "pre-install"
RBAC_SECTION = "control plane RBAC"
WEBHOOK_SECTION = "injection webhook"


def _not_tried(names: Sequence[str]) -> tuple[Result, ...]:
    return tuple(failed(n, "not tried: the API server is not reachable") for n in names)


def pre_checks(kubeconfig: str | None, namespace: str, configuration: str) -> tuple[Section, ...]:
    client, probe = connect(kubeconfig)
    api = Section(API_SECTION, (check_api(probe), check_version(probe)))
    if client is None or probe.version is None:
        return api, Section(PRE_INSTALL_SECTION, _not_tried((CREATE_NAME, GRANT_NAME)))
    creates = ask(client.api, chart_objects(namespace))
    held = ask(client.api, control_plane_access(namespace, configuration))
    escalate = [] if all(a.allowed for a in held) else ask(client.api, escalation(namespace))
    return api, Section(
        PRE_INSTALL_SECTION, (check_can_create(creates), check_can_grant(held, escalate))
    )


def cluster_checks(
    kubeconfig: str | None,
    namespace: str,
    account: str,
    service: str,
    configuration: str,
    now: datetime.datetime | None = None,
) -> tuple[Section, ...]:
    client, probe = connect(kubeconfig)
    api = Section(API_SECTION, (check_api(probe), check_version(probe)))
    if client is None or probe.version is None:
        return (
            api,
            Section(RBAC_SECTION, _not_tried((f"{RBAC_NAME} ({namespace}/{account})",))),
            Section(WEBHOOK_SECTION, _not_tried((WEBHOOK_NAME, TARGET_NAME, CA_NAME))),
        )
    answers = ask(
        client.api,
        control_plane_access(namespace, configuration),
        service_account_user(namespace, account),
    )
    webhook = probe_webhook(client.api, configuration, namespace)
    return (
        api,
        Section(RBAC_SECTION, (check_control_plane_rbac(answers, namespace, account),)),
        Section(
            WEBHOOK_SECTION,
            (
                check_webhook(webhook),
                check_target(webhook, namespace, service),
                check_ca_bundle(webhook, now or datetime.datetime.now(datetime.UTC)),
            ),
        ),
    )
