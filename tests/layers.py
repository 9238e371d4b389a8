"""Every test in exactly one layer (DESIGN.md, "Tests, in layers"), as a pytest marker.

A test's layer is, first match wins:
1. a layer marker it carries itself (`@pytest.mark.unit`, or a module's `pytestmark`);
2. `pods` when it uses the fixture `node` (or a fixture that depends on it), or lives in a
   `tests/test_pods_*.py` module: real pods on a real node;
3. `kube` when it uses the fixture `kube` (so also `kubelet` and `namespace`, which depend
   on it): the real Kubernetes control plane;
4. its entry in TESTS: a test whose layer differs from its module's (mostly a lighter one,
   listed so that the fast tier runs it);
5. its module's entry in MODULES: the heaviest thing the module's other tests need.

tests/test_layers.py fails when a test module is missing from MODULES or an entry names a
module or a test that does not exist. A layer is a test's heaviest need, so a test that
starts Envoy inside a network namespace is `netns`, one on the cluster that also makes
network namespaces is `kube`.

See docs/testing.md for what each layer needs and how to run one.
"""

from __future__ import annotations

import pytest

# Lightest first; registered with what each needs in pyproject.toml's markers.
LAYERS = ("unit", "sockets", "peers", "netns", "images", "kube", "pods")
# What `bash scripts/test.sh --fast` runs: no root, no Go build.
FAST_TIER = "unit or sockets"

UNIT, SOCKETS, PEERS, NETNS, IMAGES, KUBE, PODS = LAYERS

# A test that uses the first fixture (or one that depends on it) is in pods, one that uses
# the second in kube; every test of a module named test_pods_* is in pods too.
POD_FIXTURE, KUBE_FIXTURE, PODS_PREFIX = "node", "kube", "test_pods_"

MODULES: dict[str, str] = {
    "test_ads_cores": UNIT,
    "test_ads_server": SOCKETS,
    "test_app_protocols": UNIT,
    "test_capture": NETNS,  # nft in a network namespace; the ruleset's golden files: TESTS
    "test_certs": UNIT,
    "test_check": NETNS,  # its --pre and --cluster checks take the kube fixture
    "test_claims": UNIT,
    "test_cli": SOCKETS,
    "test_control_plane_process": SOCKETS,
    "test_dashboards": PEERS,  # helm renders the chart; the scrape test takes kube
    "test_demo": NETNS,
    "test_demo_view": UNIT,
    "test_dev_loop": SOCKETS,
    "test_devmesh": NETNS,
    "test_dns_cache": UNIT,
    "test_dns_forwarder": SOCKETS,
    "test_dns_fuzz": SOCKETS,
    "test_dns_replay": UNIT,
    "test_dns_resolv": UNIT,
    "test_dns_server": PEERS,  # every test forwards to a real unbound
    "test_dns_table": UNIT,
    "test_dns_tcp": SOCKETS,
    "test_dns_tcp_clock": UNIT,
    "test_envoy": PEERS,
    "test_error_detail": UNIT,
    "test_firewall": NETNS,
    "test_helm_chart": PEERS,  # the Go-built helm: lint, template
    "test_helm_install": KUBE,
    "test_image": IMAGES,
    "test_http_balancing": NETNS,  # the sidecar, Envoy and gRPC peers behind capture rules
    "test_http1_balancing": NETNS,  # the sidecar and HTTP/1.1 peers behind capture rules
    "test_http_retry": UNIT,
    "test_http1_framing": UNIT,
    "test_inject": UNIT,
    "test_injected_pod": NETNS,  # devmesh pods, unbound as the cluster DNS
    "test_k8s_control_plane": KUBE,
    "test_k8s_dns": KUBE,
    "test_k8s_outages": KUBE,
    "test_k8s_source": KUBE,
    "test_k8s_webhook": KUBE,
    "test_kube_objects": UNIT,
    "test_layers": UNIT,
    "test_manifest_hostile": SOCKETS,  # parser children with limits, FIFOs, devices
    "test_manifests": UNIT,
    "test_mesh": NETNS,
    "test_mesh_cold_start": NETNS,
    "test_nack": SOCKETS,
    "test_operability": SOCKETS,
    "test_otlp_install": PEERS,  # pip installs meshlet's wheel from PyPI into a fresh venv
    "test_port_clash": SOCKETS,
    "test_protos": UNIT,
    "test_proxy": NETNS,  # every test behind real capture rules in a namespace
    "test_proxy_balancer": UNIT,
    "test_proxy_connect_plan": UNIT,
    "test_proxy_idle": SOCKETS,
    "test_proxy_status": SOCKETS,
    "test_proxyless_grpc": PEERS,
    "test_readme": SOCKETS,  # runs the control plane the README shows
    "test_reflector": UNIT,
    "test_saved_state": UNIT,
    "test_scale_work": SOCKETS,
    "test_sidecar_app": UNIT,
    "test_sidecar_pod_ports": SOCKETS,
    "test_sidecar_process": SOCKETS,
    "test_sidecar_validate": UNIT,
    "test_sidecar_validate_fuzz": UNIT,
    "test_sidecar_xds": SOCKETS,
    "test_sidecar_xds_core": UNIT,
    "test_sidecar_xds_hostile": UNIT,
    "test_sidecar_xds_outage": UNIT,
    "test_sources": UNIT,
    "test_tiltfile": PEERS,  # the Go-built tilt
    "test_translate": UNIT,
    "test_webhook_server": SOCKETS,
    "test_wire": UNIT,
}

# Tests lighter than their module: module -> function -> layer (each parametrized case).
TESTS: dict[str, dict[str, str]] = {
    "test_capture": {
        "test_default_ruleset": UNIT,
        "test_dual_stack_ruleset_with_exclusions": UNIT,
        "test_without_nameservers_dns_is_left_alone": UNIT,
        "test_remove_script": UNIT,
        "test_dry_run_prints_the_script_from_flags_and_resolv_conf": UNIT,
        "test_bad_flags_are_refused": UNIT,
    },
    "test_check": {
        "test_an_old_kubernetes_fails_the_version_check": UNIT,
        "test_the_ca_check_wants_the_host_the_api_server_calls_and_a_valid_certificate": UNIT,
        "test_pre_asks_to_create_every_kind_the_chart_renders_and_nothing_else": PEERS,
    },
    "test_dashboards": {
        "test_every_query_parses_and_reads_meshlet_metrics": UNIT,
        "test_every_alert_says_what_and_how_bad": UNIT,
    },
    "test_demo": {
        # Run as nobody when the suite is root: the refusal needs no root.
        "test_without_root_the_demo_says_so_in_one_line_and_changes_nothing": SOCKETS,
        "test_examples_demo_holds_what_the_demo_serves_first": UNIT,
    },
    "test_firewall": {
        "test_an_ip_forward_drop_matters_only_when_bridged_frames_pass_the_ip_hooks": UNIT,
        "test_a_bridge_forward_drop_always_matters": UNIT,
        "test_legacy_iptables_policy": UNIT,
    },
    "test_otlp_install": {
        "test_record_digest_is_the_one_a_wheels_record_writes": UNIT,
        "test_overwritten_names_the_files_changed_or_gone": UNIT,
        "test_the_dev_venv_has_opentelemetry_protos_own_files": UNIT,
        "test_meshlets_copy_is_the_installed_opentelemetry_protos": UNIT,
    },
    # Heavier than their module.
    "test_operability": {"test_log_levels_change_only_from_loopback": NETNS},
    "test_tiltfile": {"test_tilt_ci_local_runs_to_green": NETNS},  # the demo's pods
}


def layer_of(module: str, function: str, fixtures: set[str]) -> str | None:
    """The layer of a test without a layer marker of its own (None: not in the tables)."""
    if POD_FIXTURE in fixtures or module.startswith(PODS_PREFIX):
        return PODS
    if KUBE_FIXTURE in fixtures:
        return KUBE
    return TESTS.get(module, {}).get(function, MODULES.get(module))


def _module_name(item: pytest.Item) -> str:
    return item.path.stem


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        own = [mark.name for mark in item.iter_markers() if mark.name in LAYERS]
        if len(set(own)) > 1:
            raise pytest.UsageError(f"{item.nodeid}: more than one layer marker: {own}")
        if own:
            continue
        function = getattr(item, "originalname", item.name)
        fixtures = set(getattr(item, "fixturenames", ()))  # a pytest.Function's
        layer = layer_of(_module_name(item), function, fixtures)
        if layer is not None:  # a module missing from MODULES: tests/test_layers.py fails
            item.add_marker(getattr(pytest.mark, layer))
