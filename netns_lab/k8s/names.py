"""How Kubernetes names and places pods, made deterministic: template hashes, pod names, spreading over workers.

A Deployment's pods are `<deployment>-<pod-template-hash>-<5 chars>`. The hash is FNV-32a of
the pod template rendered with Kubernetes' "safe" alphabet (no vowels, no 0/1/3), as the
Deployment controller does, so the same template always gives the same ReplicaSet name. The
5 characters are random in Kubernetes; here they come from the ReplicaSet's name and a
counter of the pods it has made, so a lab built twice gets the same names while a
replacement pod still gets a new one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from netns_lab.topology import Topology

# k8s.io/apimachinery/pkg/util/rand: letters and digits that cannot spell words
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SUFFIX_LEN = 5
POD_NAME_MAX = 63  # a pod name is its hostname: one DNS label


def _fnv32a(data: bytes) -> int:
    """FNV-1a, 32 bits (what the Deployment controller hashes pod templates with)."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    """rand.SafeEncodeString: each character mapped into the safe alphabet."""
    return "".join(SAFE_ALPHABET[ord(c) % len(SAFE_ALPHABET)] for c in text)


def template_hash(template: Any) -> str:
    """pod-template-hash of a pod template (any JSON-able form of it): stable, up to 10 safe characters."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return safe_encode(str(_fnv32a(canonical.encode())))


def pod_suffix(replicaset: str, index: int) -> str:
    """The 5 characters after a ReplicaSet's name for its `index`-th pod."""
    digest = hashlib.sha256(f"{replicaset}/{index}".encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:SUFFIX_LEN])


def pod_name(replicaset: str, index: int) -> str:
    """`<replicaset>-<5 chars>`."""
    return f"{replicaset}-{pod_suffix(replicaset, index)}"


def workers(topo: Topology) -> list[str]:
    """Nodes pods may be spread to: all but control planes (all nodes if every one is a control plane)."""
    names = [n.name for n in topo.nodes if not n.control_plane]
    return names or [n.name for n in topo.nodes]


def spread(topo: Topology) -> str:
    """The worker with the fewest pods (ties: topology order), as the scheduler's spreading tends to pick."""
    load = {n: 0 for n in workers(topo)}
    for p in topo.pods:
        if p.node in load:
            load[p.node] += 1
    return min(load, key=lambda n: (load[n], list(load).index(n)))
