"""The TLS the webhook serves with: one SSLContext whose certificate can be swapped.

New handshakes use the certificate loaded last, so a renewed or rotated one takes
effect without a restart or a dropped connection. PEM from memory goes through a
memfd, so nothing is written to a (read-only) filesystem.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from meshlet.inject.certs import KeyPair


@contextlib.contextmanager
def _as_path(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("meshlet-tls", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile() as file:  # no memfd: a private temporary file
        file.write(data)
        file.flush()
        yield file.name


class ServingCertificate:
    def __init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._loaded: KeyPair | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def load(self, pair: KeyPair) -> bool:
        """Serve `pair` from the next handshake on; False when it is what is served already."""
        if pair == self._loaded:
            return False
        with _as_path(pair.cert) as cert, _as_path(pair.key) as key:
            self.context.load_cert_chain(cert, key)
        self._loaded = pair
        return True

    def load_files(self, cert: Path, key: Path) -> bool:
        return self.load(KeyPair(cert.read_bytes(), key.read_bytes()))
