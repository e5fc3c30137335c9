"""`netns-lab patch felixconfiguration default` and `mode` (`get` is commands/kubectl.py): the lesson's calicoctl knobs, applied live."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console

from netns_lab import felix as felix_model
from netns_lab.commands.common import console, lab_handle, lab_option, namespace_default_option, output_option, require_root
from netns_lab.errors import LabError
from netns_lab.felix import FelixConfig, FelixConfigError
from netns_lab.k8s import patch as k8s_patch
from netns_lab.k8s.patch import SERVICE_KINDS
from netns_lab.lab import PROG
from netns_lab.state import MODES

FELIX_KINDS = ("felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs")


def felix_target(kind: str, name: str) -> None:
    """LabError unless KIND NAME is felixconfiguration default (the only resource of its kind here)."""
    if kind.lower() not in FELIX_KINDS:
        raise LabError(f"unknown resource kind {kind!r}: this lab has felixconfiguration and services "
                       f"(e.g. {PROG} get felixconfiguration default)")
    if name != "default":
        raise LabError(f"felixconfiguration {name!r} not found: this lab has only 'default'")


def _report(out: Console, ch: Any) -> None:
    """One closing line for a mode switch."""
    if not ch.changed:
        out.print(f"mode {ch.new_mode}: nothing to change", highlight=False)
    elif ch.old_mode == ch.new_mode:
        out.print(f"mode {ch.new_mode}: updated in {ch.total_s:.2f}s", highlight=False)
    else:
        out.print(f"mode {ch.old_mode} -> {ch.new_mode} in {ch.total_s:.2f}s", highlight=False)


@click.command(
    epilog="""\b
Examples (the lesson's calicoctl commands):
  netns-lab patch felixconfiguration default --patch='{"spec": {"bpfKubeProxyIptablesCleanupEnabled": false}}'
  netns-lab patch felixconfiguration default --patch='{"spec": {"bpfEnabled": true}}'
  netns-lab patch felixconfiguration default --patch='{"spec": {"bpfExternalServiceMode": "DSR"}}'
  netns-lab patch felixconfiguration default -p '{"spec": {"bpfDSROptoutCIDRs": ["198.19.15.0/24"]}}'
  netns-lab patch felixconfiguration default -p '{"spec": {"bpfConnectTimeLoadBalancing": "Disabled"}}'
  netns-lab patch felixconfiguration default -p '{"spec": {"bpfMapSizeConntrack": 65536}}'
  netns-lab patch service customer -n yaobank -p '{"spec": {"externalTrafficPolicy": "Local"}}'
  netns-lab patch svc summary -n yaobank -p '{"spec": {"internalTrafficPolicy": "Local"}}'
\b
Fields: bpfEnabled (true: eBPF dataplane), bpfExternalServiceMode (Tunnel | DSR),
bpfKubeProxyIptablesCleanupEnabled (false: kube-proxy's rules stay, bypassed by BPF),
bpfDSROptoutCIDRs (clients that keep Tunnel behaviour in DSR mode),
bpfConnectTimeLoadBalancing (TCP | Enabled | Disabled: which of a node's own sockets get a
backend at connect(); the rest is NATed per packet),
bpfMapSizeConntrack (conntrack entries per node, 1024-4194304, default 512000: about 74 MB
per node; a change reloads the eBPF nodes, their entries copied into the new map).
"""
)
@lab_option
@namespace_default_option
@click.argument("kind", metavar="felixconfiguration|service")
@click.argument("name", metavar="default|NAME")
@click.option("-p", "--patch", "patch_text", required=True, metavar="JSON", help='A JSON merge patch: {"spec": {...}}.')
def patch(lab: str | None, namespace: str | None, kind: str, name: str, patch_text: str) -> int:
    """Patch FelixConfiguration "default" as calicoctl does, or a Service as kubectl does; live."""
    if kind.lower() in SERVICE_KINDS:
        k8s_patch.parse(patch_text)  # refuse bad JSON before the root check
        require_root()
        for line in lab_handle(lab).patch_service(name, namespace or "default", patch_text):
            console().print(line, highlight=False)
        return 0
    felix_target(kind, name)
    try:
        felix_model.apply_patch(FelixConfig(), patch_text)  # refuse bad input before the root check
    except FelixConfigError as exc:
        raise LabError(str(exc)) from None
    require_root()
    out = console()
    ch = lab_handle(lab, out).patch_felix(patch_text)
    out.print("Successfully patched 1 'FelixConfiguration' resource", highlight=False)
    _report(out, ch)
    return 0


@click.command(
    "mode",
    epilog="""\b
Examples:
  netns-lab mode                  # show the current mode
  netns-lab mode tunnel           # = patch {"spec": {"bpfEnabled": true, "bpfExternalServiceMode": "Tunnel"}}
  netns-lab mode dsr              # = ... "bpfExternalServiceMode": "DSR"
  netns-lab mode kube-proxy       # = patch {"spec": {"bpfEnabled": false}}, kube-proxy in iptables mode
  netns-lab mode kube-proxy-nft   # bpfEnabled false, kube-proxy in nftables mode (KubeProxyConfiguration
                                  # mode: nftables; verdict-map lookups, `nft list table ip kube-proxy`)
""",
)
@lab_option
@click.argument("mode", required=False, type=click.Choice(MODES))
@output_option
def mode_cmd(lab: str | None, mode: str | None, output: str) -> int:
    """Switch the service dataplane of a running lab live (kube-proxy, kube-proxy-nft, tunnel or dsr); without MODE, show it."""
    if mode is None:
        handle = lab_handle(lab)
        st = handle.state()
        doc = {"lab": handle.name, "mode": st.mode, "felix": st.felix.to_spec(), "kubeProxyMode": st.kubeproxy.mode}
        click.echo(json.dumps(doc, indent=2) if output == "json" else str(doc["mode"]))
        return 0
    require_root()
    out = console()
    _report(out, lab_handle(lab, out).switch_mode(mode))
    return 0


COMMANDS = (patch, mode_cmd)
