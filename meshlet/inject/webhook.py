"""The injection webhook the control plane serves: POST /inject (AdmissionReview v1) over
HTTPS, with the settings file reloaded when it changes and the certificate either kept
by the control plane itself (`keeper.py`) or read from files (cert-manager) and read
again when they change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshlet.admin_http import AdminServer, Response
from meshlet.inject.review import decide, decode
from meshlet.inject.serving import ServingCertificate
from meshlet.inject.settings import InjectorSettings, SettingsError, load_settings

if TYPE_CHECKING:  # it needs the Kubernetes client; this module does not
    from meshlet.inject.namespaces import NamespaceLabels

log = logging.getLogger(__name__)

# AdmissionReviews of big pods are some hundred KB; an object is at most 3 MB in etcd.
MAX_REVIEW_BYTES = 4 << 20
_POLL_SECONDS = 2.0


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class SettingsFile:
    """The injector's settings: the file's, read again when it changes (a ConfigMap update
    swaps the mounted file); a file that turns bad keeps the last good settings. `image`,
    when given (--injector-image), wins over the file's."""

    def __init__(
        self, path: str | None, report: Callable[[Sequence[str]], None], image: str | None = None
    ) -> None:
        self.path = Path(path) if path else None
        self._report = report
        self._image = image
        self._stamp: tuple[int, int, int] | None = None
        self._loaded = False
        self.current = self._overridden(InjectorSettings())
        self._problem = ""

    def load(self) -> None:
        """Read the file if it changed; raises SettingsError only on the first read."""
        if self.path is None:
            return
        stamp = _stamp(self.path)
        if self._loaded and stamp == self._stamp and stamp is not None:
            return
        first = not self._loaded
        self._stamp = stamp
        try:
            self.current = self._overridden(load_settings(self.path))
        except SettingsError as exc:
            if first:
                raise
            problem = f"injector settings: {exc} (the last good settings stay in use)"
            if problem != self._problem:
                log.error("%s", problem)
            self._problem = problem
            self._report([problem])
            return
        if not first:
            log.info("injector settings read again from %s", self.path)
        self._loaded = True
        self._problem = ""
        self._report([])

    def _overridden(self, settings: InjectorSettings) -> InjectorSettings:
        return replace(settings, image=self._image) if self._image else settings

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            try:
                self.load()
            except SettingsError:  # only a first read raises, and that was at start-up
                log.exception("injector settings")


class CertificateFiles:
    """A certificate and key from files (cert-manager's Secret, mounted), read again when
    they change."""

    def __init__(self, cert: str, key: str, serving: ServingCertificate) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.serving = serving
        self._stamps: tuple[object, object] | None = None

    def load(self) -> None:
        stamps = (_stamp(self.cert), _stamp(self.key))
        if stamps == self._stamps:
            return
        self._stamps = stamps
        if self.serving.load_files(self.cert, self.key):
            log.info("webhook: serving the certificate in %s", self.cert)

    async def watch(self, report: Callable[[Sequence[str]], None]) -> None:
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            try:
                self.load()
                report([])
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                report([f"webhook certificate files: {exc} (the last good one stays in use)"])


@dataclass
class InjectionWebhook:
    settings: SettingsFile
    # The pods' namespaces' labels (their Pod Security level), where there is an API.
    namespaces: NamespaceLabels | None = None

    async def answer(self, body: bytes) -> dict[str, Any]:
        request = decode(body)
        if isinstance(request, dict):
            return request
        if self.namespaces is None:
            return decide(request, self.settings.current)
        found = await self.namespaces.get(request.namespace)
        unchecked = []
        if found.labels is None:
            unchecked.append(
                f"could not read namespace {request.namespace} ({found.problem}): its Pod"
                " Security level was not checked"
            )
        return decide(request, self.settings.current, found.labels, unchecked)

    def server(self) -> AdminServer:
        async def inject(_: object, body: bytes) -> Response:
            answer = await self.answer(body)
            response = answer.get("response", {})
            if not response.get("allowed", True):
                log.info("webhook: refused %s", response.get("status", {}).get("message"))
            return Response(200, json.dumps(answer).encode(), "application/json")

        def ready(_: object) -> Response:
            return Response.text("ready\n")

        return AdminServer({"/healthz": ready}, {"/inject": inject}, max_body=MAX_REVIEW_BYTES)


def replica_identity() -> str:
    """This replica, as a Lease holder: the pod's name (the host name in a pod) and PID."""
    return f"{os.environ.get('POD_NAME') or os.uname().nodename}-{os.getpid()}"
