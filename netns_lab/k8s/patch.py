"""`kubectl patch service NAME -p JSON`: a JSON merge patch (RFC 7386) on a Service, applied as `apply` would.

The service is shown in its Kubernetes shape (views.py), the patch merged into it, and the result
parsed and applied by manifest.py like any manifest object: the same checks, the same allocation
(a healthCheckNodePort when externalTrafficPolicy becomes Local), the same one-line errors.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable

from netns_lab.errors import LabError
from netns_lab.k8s import manifest
from netns_lab.topology import Service, Topology

SERVICE_KINDS = ("service", "services", "svc")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def parse(text: str) -> dict[str, Any]:
    """The patch as a JSON object; LabError (one line) otherwise."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise LabError(f"--patch is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(doc, dict):
        raise LabError('--patch must be a JSON object, e.g. {"spec": {"externalTrafficPolicy": "Local"}}')
    return doc


# Kubernetes' Service fields (core/v1): a patch naming any other is refused, as kubectl's strict field
# validation refuses it, rather than "patched (no change)" for a typo.
OBJECT_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
SPEC_FIELDS = (
    "allocateLoadBalancerNodePorts", "clusterIP", "clusterIPs", "externalIPs", "externalName",
    "externalTrafficPolicy", "healthCheckNodePort", "internalTrafficPolicy", "ipFamilies", "ipFamilyPolicy",
    "loadBalancerClass", "loadBalancerIP", "loadBalancerSourceRanges", "ports", "publishNotReadyAddresses",
    "selector", "sessionAffinity", "sessionAffinityConfig", "trafficDistribution", "type",
)


def check_fields(patch: dict[str, Any]) -> None:
    """LabError (one line) for a field a Service does not have, at the top or in spec."""
    spec = patch.get("spec")
    unknown = [k for k in patch if k not in OBJECT_FIELDS]
    unknown += [f"spec.{k}" for k in (spec if isinstance(spec, dict) else ()) if k not in SPEC_FIELDS]
    if unknown:
        raise LabError(f'unknown field "{unknown[0]}" in the patch: a Service has no such field')


def patch_service(topo: Topology, name: str, namespace: str, patch: dict[str, Any],
                  as_object: Callable[[Service], dict[str, Any]]) -> manifest.Result:
    """The topology with service namespace/name patched (`as_object`: the service in Kubernetes shape)."""
    check_fields(patch)
    svc = next((s for s in topo.services if (s.namespace, s.name) == (namespace, name)), None)
    if svc is None:
        raise LabError(f'services "{name}" not found in namespace {namespace!r}')
    merged = merge_patch(as_object(svc), patch)
    meta = merged.get("metadata") if isinstance(merged.get("metadata"), dict) else {}
    if (meta.get("name"), meta.get("namespace", namespace)) != (name, namespace) or merged.get("kind") != "Service":
        raise LabError("a patch cannot change the kind, name or namespace of an object")
    spec = merged.get("spec") if isinstance(merged.get("spec"), dict) else {}
    # The API server drops the health check port with the Local policy, unless the patch sets one.
    if spec.get("externalTrafficPolicy") != "Local" and "healthCheckNodePort" not in (patch.get("spec") or {}):
        spec.pop("healthCheckNodePort", None)
    doc = manifest.Doc(f"patch of service/{name}", merged, {})
    result = manifest.apply([doc], topo)
    result.lines = [f"service/{name} {'patched (no change)' if 'unchanged' in line else 'patched'}"
                    for line in result.lines]
    return result
