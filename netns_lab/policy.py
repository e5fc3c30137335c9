"""Which endpoints a node's proxy may use for a service port: kube-proxy's CategorizeEndpoints, reproduced.

Shared by the kube-proxy rule generators, the health check server and the eBPF cluster view, so
every mode answers the same question the same way: ready endpoints first; when none is ready,
the serving-but-terminating ones (kube-proxy's fallback for graceful termination); Local traffic
policies keep only the endpoints on the node itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


class _Endpoint(Protocol):
    node: str
    terminating: bool


@dataclass
class Endpoints:
    """The usable endpoints of one service port as seen from one node."""

    cluster: list  # usable cluster-wide (Cluster policy)
    local: list  # usable on this node (Local policy)

    @property
    def any(self) -> bool:
        """kube-proxy's hasEndpoints: some endpoint this node can reach at all."""
        return bool(self.cluster or self.local)


def usable(eps: Sequence[_Endpoint]) -> list:
    """Ready endpoints, else the terminating ones (kube-proxy's serving+terminating fallback)."""
    ready = [e for e in eps if not e.terminating]
    return ready if ready else list(eps)


def categorize(eps: Sequence[_Endpoint], node: str) -> Endpoints:
    """The cluster-wide and node-local usable endpoints of a port on `node`."""
    return Endpoints(usable(eps), usable([e for e in eps if e.node == node]))
