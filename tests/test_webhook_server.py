"""The webhook as the API server meets it, over HTTPS, with certificates from files (as
cert-manager provides them) and its settings file, both read again when they change."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509

from tests.k8s import pki
from tests.procs import control_plane, free_port, peer_certificate, wait_until
from tests.test_inject import admission_review


def post(url: str, body: bytes, context: ssl.SSLContext) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        assert response.status == 200
        found: dict[str, Any] = json.loads(response.read())
        return found


def served_serial(port: int, context: ssl.SSLContext) -> int:
    return int(x509.load_der_x509_certificate(peer_certificate(port, context)).serial_number)


def injected_image(answer: dict[str, Any]) -> str:
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    init = next(op for op in patch if op["path"] == "/spec/initContainers")
    return str(init["value"][0]["image"])


def review_pod() -> bytes:
    pod = {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}
    return admission_review("shop", pod)


def test_https_with_certificate_files_and_settings_read_again(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority(tmp_path)
    served = ca.issue("webhook", "meshlet", server=True, hosts=("127.0.0.1",))
    settings = tmp_path / "injector.yaml"
    settings.write_text(yaml.safe_dump({"image": "registry.example/meshlet:one"}))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    port = free_port()
    trust = ssl.create_default_context(cafile=str(ca.cert))
    url = f"https://127.0.0.1:{port}/inject"
    with control_plane(
        manifests,
        tmp_path,
        extra_args=[
            f"--webhook-address=127.0.0.1:{port}",
            f"--webhook-cert-file={served.cert}",
            f"--webhook-key-file={served.key}",
            f"--injector-settings={settings}",
        ],
    ) as plane:
        answer = wait_until(
            bool, 30, "the webhook to answer", observe=lambda: post(url, review_pod(), trust)
        )
        assert (
            answer["response"]["allowed"]
            and injected_image(answer) == "registry.example/meshlet:one"
        )

        # A request that does not decode: an AdmissionReview error, and the server goes on.
        broken = post(url, b"{not json", trust)
        assert broken["kind"] == "AdmissionReview" and broken["response"]["allowed"] is False
        assert broken["response"]["status"]["code"] == 400

        # The settings file changes (a ConfigMap update): new pods get the new settings.
        settings.write_text(yaml.safe_dump({"image": "registry.example/meshlet:two"}))
        wait_until(
            lambda image: image == "registry.example/meshlet:two",
            30,
            "the new settings",
            observe=lambda: injected_image(post(url, review_pod(), trust)),
        )
        # A bad edit is a problem, and the last good settings stay in use.
        settings.write_text(
            yaml.safe_dump({"image": "registry.example/meshlet:three", "mdoe": "x"})
        )
        problems = wait_until(
            lambda found: any("injector settings" in p for p in found),
            30,
            "the bad settings to be a problem",
            observe=lambda: plane.get_json("/debug/problems"),
        )
        assert "unknown key 'mdoe'" in problems[0]
        assert injected_image(post(url, review_pod(), trust)) == "registry.example/meshlet:two"

        # cert-manager renews the certificate: the next handshake gets the new one.
        before = served_serial(port, trust)
        renewed = ca.issue("webhook", "meshlet", server=True, hosts=("127.0.0.1",))
        assert renewed.cert == served.cert  # the same files, new content
        wait_until(
            lambda serial: serial != before,
            30,
            "the renewed certificate",
            observe=lambda: served_serial(port, trust),
        )
        assert post(url, review_pod(), trust)["response"]["allowed"]
        plane.process.check_alive()
