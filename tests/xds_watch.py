"""A delta xDS client that subscribes to a few named resources and records every response.

A real gRPC stream on its own thread: it ACKs what it gets, so a test can ask
"was anything sent to a client that only cares about X?".
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse


class DeltaWatch:
    def __init__(self, address: str, node_id: str, type_url: str, names: Sequence[str]) -> None:
        self.responses: list[DeltaDiscoveryResponse] = []
        self._lock = threading.Lock()
        self._requests: queue.Queue[DeltaDiscoveryRequest | None] = queue.Queue()
        first = DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=list(names))
        first.node.id = node_id
        self._requests.put(first)
        self._type_url = type_url
        self._channel = grpc.insecure_channel(address)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._call = stub.DeltaAggregatedResources(self._outgoing())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _outgoing(self) -> Iterator[DeltaDiscoveryRequest]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._lock:
                    self.responses.append(response)
                self._requests.put(
                    DeltaDiscoveryRequest(type_url=self._type_url, response_nonce=response.nonce)
                )
        except grpc.RpcError:
            pass  # cancelled at close, or the server went away

    def count(self) -> int:
        with self._lock:
            return len(self.responses)

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._thread.join(timeout=5)
        self._channel.close()

    def __enter__(self) -> DeltaWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
