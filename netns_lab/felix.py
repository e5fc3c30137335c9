"""FelixConfiguration: the lesson's `calicoctl patch felixconfiguration default` knobs.

Only the fields that change this lab's dataplane exist; anything else is refused
with the list of valid fields, so a typo never silently does nothing.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ebpf_nodeport.abi import EBPF_MODES, MAP_SPECS

MODES = ("kube-proxy",) + EBPF_MODES
EXTERNAL_SERVICE_MODES = ("Tunnel", "DSR")
# bpfConnectTimeLoadBalancing: which sockets of a node are given a backend at connect()
# (Calico's default TCP; the rest of a node's service traffic is NATed per packet)
CTLB_SETTINGS = ("TCP", "Enabled", "Disabled")
# bpfMapSizeConntrack: entries of each node's conntrack map (Calico's default 512000, which is the
# datapath's MAX_CT). The map is preallocated, ~144 bytes an entry with its bucket: 74 MB per node at
# the default, so a smaller lab can ask for less; the bounds keep a typo from asking for gigabytes.
CT_SIZE_DEFAULT = MAP_SPECS["ct"].max_entries
CT_SIZE_MIN, CT_SIZE_MAX = 1024, 4_194_304


class FelixConfigError(ValueError):
    """A patch or mode the lab cannot apply; the message is one line for the user."""


@dataclass(frozen=True)
class FelixConfig:
    """The spec of FelixConfiguration "default" as far as this lab models it."""
    bpfEnabled: bool = False
    bpfExternalServiceMode: str = "Tunnel"
    bpfKubeProxyIptablesCleanupEnabled: bool = True
    bpfDSROptoutCIDRs: tuple[str, ...] = field(default_factory=tuple)
    bpfConnectTimeLoadBalancing: str = "TCP"
    bpfMapSizeConntrack: int = CT_SIZE_DEFAULT

    @property
    def mode(self) -> str:
        """The lab mode this spec selects: kube-proxy, tunnel or dsr."""
        if not self.bpfEnabled:
            return "kube-proxy"
        return "dsr" if self.bpfExternalServiceMode == "DSR" else "tunnel"

    def to_spec(self) -> dict[str, Any]:
        spec = asdict(self)
        spec["bpfDSROptoutCIDRs"] = list(self.bpfDSROptoutCIDRs)
        return spec

    def to_resource(self) -> dict[str, Any]:
        """The object as `calicoctl get felixconfiguration default -o yaml` would show it."""
        return {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                "metadata": {"name": "default"}, "spec": self.to_spec()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> "FelixConfig":
        return apply_spec(cls(), spec or {})


_FIELDS = tuple(FelixConfig.__dataclass_fields__)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FelixConfigError(f"spec.{name} must be true or false, not {json.dumps(value)}")
    return value


def _check_cidrs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise FelixConfigError("spec.bpfDSROptoutCIDRs must be a list of CIDRs, e.g. [\"198.19.15.0/24\"]")
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.IPv4Network(str(item), strict=False)))
        except ValueError:
            raise FelixConfigError(f"spec.bpfDSROptoutCIDRs: {json.dumps(item)} is not an IPv4 CIDR") from None
    return tuple(out)


def apply_spec(cfg: FelixConfig, spec: dict[str, Any]) -> FelixConfig:
    """Merge a spec fragment into cfg after checking every field and value."""
    if not isinstance(spec, dict):
        raise FelixConfigError("spec must be an object, e.g. {\"spec\": {\"bpfEnabled\": true}}")
    changes: dict[str, Any] = {}
    for name, value in spec.items():
        if name not in _FIELDS:
            raise FelixConfigError(f"unknown field spec.{name}; valid fields: {', '.join(_FIELDS)}")
        if name == "bpfExternalServiceMode":
            if value not in EXTERNAL_SERVICE_MODES:
                raise FelixConfigError(
                    f"spec.bpfExternalServiceMode must be one of {', '.join(EXTERNAL_SERVICE_MODES)}, not {json.dumps(value)}")
            changes[name] = value
        elif name == "bpfConnectTimeLoadBalancing":
            if value not in CTLB_SETTINGS:
                raise FelixConfigError(
                    f"spec.bpfConnectTimeLoadBalancing must be one of {', '.join(CTLB_SETTINGS)}, not {json.dumps(value)}")
            changes[name] = value
        elif name == "bpfDSROptoutCIDRs":
            changes[name] = _check_cidrs(value)
        elif name == "bpfMapSizeConntrack":
            if isinstance(value, bool) or not isinstance(value, int) or not CT_SIZE_MIN <= value <= CT_SIZE_MAX:
                raise FelixConfigError(f"spec.bpfMapSizeConntrack must be a whole number of entries from "
                                       f"{CT_SIZE_MIN} to {CT_SIZE_MAX}, not {json.dumps(value)}")
            changes[name] = value
        else:
            changes[name] = _check_bool(name, value)
    return replace(cfg, **changes)


def apply_patch(cfg: FelixConfig, patch_text: str) -> FelixConfig:
    """Apply a calicoctl-style JSON merge patch: {"spec": {...}}."""
    try:
        patch = json.loads(patch_text)
    except json.JSONDecodeError as e:
        raise FelixConfigError(f"--patch is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(patch, dict) or set(patch) - {"spec", "metadata"}:
        raise FelixConfigError("--patch must be an object with a \"spec\" key, e.g. {\"spec\": {\"bpfEnabled\": true}}")
    meta = patch.get("metadata") or {}
    if meta.get("name", "default") != "default":
        raise FelixConfigError("only FelixConfiguration \"default\" exists in this lab")
    return apply_spec(cfg, patch.get("spec", {}))


def for_mode(cfg: FelixConfig, mode: str) -> FelixConfig:
    """The short form: `netns-lab mode tunnel` is bpfEnabled + bpfExternalServiceMode Tunnel."""
    if mode not in MODES:
        raise FelixConfigError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if mode == "kube-proxy":
        return replace(cfg, bpfEnabled=False)
    return replace(cfg, bpfEnabled=True, bpfExternalServiceMode="DSR" if mode == "dsr" else "Tunnel")
