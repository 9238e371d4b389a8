"""The injection webhook inside the control plane: settings, TLS, and the HTTPS server.

One Deployment is the whole control plane, as istiod: the webhook listens on its own
port (15017) once it has a certificate, kept by the control plane (Secret, Lease,
caBundle) or read from files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kubernetes import client as k8s

from meshlet.flags import grpc_address
from meshlet.inject.keeper import CertificateKeeper, KeeperConfig
from meshlet.inject.namespaces import NamespaceLabels, api_reader
from meshlet.inject.serving import ServingCertificate
from meshlet.inject.webhook import (
    CertificateFiles,
    InjectionWebhook,
    SettingsFile,
    replica_identity,
)
from meshlet.listen import listening

log = logging.getLogger(__name__)

Report = Callable[[str, Sequence[str]], None]


@dataclass(frozen=True)
class WebhookConfig:
    address: tuple[str, int]
    system_namespace: str
    configuration: str  # the MutatingWebhookConfiguration whose caBundle is kept
    service: str  # the control plane's Service: the names the certificate must carry
    cluster_domain: str
    extra_hosts: tuple[str, ...] = ()
    settings_path: str | None = None
    image: str | None = None  # the sidecar's image, over the settings file's
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def secret(self) -> str:
        return f"{self.configuration}-tls"

    def hosts(self) -> tuple[str, ...]:
        base = f"{self.service}.{self.system_namespace}.svc"
        return (base, f"{base}.{self.cluster_domain}", *self.extra_hosts)


class WebhookRunner:
    def __init__(self, config: WebhookConfig, api: k8s.ApiClient | None, report: Report) -> None:
        self.config = config
        self._api = api
        self._report = report
        self.serving = ServingCertificate()
        self.settings = SettingsFile(
            config.settings_path, lambda p: report("injector settings", p), config.image
        )
        namespaces = None
        if api is not None:
            namespaces = NamespaceLabels(api_reader(api), api.configuration.host)
        self.webhook = InjectionWebhook(self.settings, namespaces)
        self._server = self.webhook.server()
        self._tasks: list[asyncio.Task[None]] = []
        self._keeper: CertificateKeeper | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Read the settings (a bad file is an error now: SettingsError) and start keeping
        the certificate; the server listens once there is one."""
        self.settings.load()
        self._tasks.append(asyncio.create_task(self.settings.watch()))
        if self.config.cert_file and self.config.key_file:
            files = CertificateFiles(self.config.cert_file, self.config.key_file, self.serving)
            files.load()  # unreadable at start-up: an error now
            await self._listen()
            self._tasks.append(
                asyncio.create_task(files.watch(lambda p: self._report("webhook", p)))
            )
            return
        if self._api is None:
            raise ValueError(
                "the webhook needs --webhook-cert-file and --webhook-key-file when it cannot"
                " keep its own certificate on the Kubernetes API"
            )
        keeper = CertificateKeeper(
            self._api,
            KeeperConfig(
                namespace=self.config.system_namespace,
                secret=self.config.secret,
                configuration=self.config.configuration,
                hosts=self.config.hosts(),
                identity=replica_identity(),
            ),
        )
        self._keeper = keeper
        self._tasks.append(asyncio.create_task(self._keep(keeper)))

    @property
    def listening(self) -> bool:
        return self.port is not None

    async def _keep(self, keeper: CertificateKeeper) -> None:
        while True:
            found = await asyncio.to_thread(keeper.step)
            self._report("webhook", found.problems)  # on the loop, which owns the registry
            # Swapped on the loop's thread, between handshakes, never under one.
            if found.serving is not None and self.serving.load(found.serving):
                log.info("webhook: serving the certificate of Secret %s", self.config.secret)
            if self.serving.loaded and self.port is None:
                try:
                    await self._listen()
                except OSError as exc:  # the port is taken, say: a problem, tried again
                    self._report("webhook", [f"webhook: {exc} (retrying)"])
            await asyncio.sleep(found.wait)

    async def _listen(self) -> None:
        host, port = self.config.address
        with listening("the injection webhook", host, port):
            self.port = await self._server.start(host, port, tls=self.serving.context)
        log.info("injection webhook on https://%s/inject", grpc_address(host, self.port))
        self._report("webhook", [])

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        await self._server.close()
        if self._keeper is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.to_thread(self._keeper.stop)
