"""`netns-lab get | apply -f | delete | scale`: kubectl's verbs on a running lab.

`get` shows pods, services, endpointslices and nodes in the Kubernetes object shape (and
FelixConfiguration "default" as calicoctl does); `apply -f`, `delete -f`, `delete pod` and
`scale` compute the lab's new topology (k8s/manifest.py) and hand it to the lab API, which
moves the running lab there live. A bad manifest is refused before anything is touched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from netns_lab.commands.common import console, lab_handle, lab_option, namespace_default_option, namespace_option, require_root, selector_option
from netns_lab.commands.felix import FELIX_KINDS, felix_target
from netns_lab.errors import LabError
from netns_lab.k8s import manifest, views
from netns_lab.lab import PROG, pid_running
from netns_lab.state import NAMESPACE_HINT, LabState
from netns_lab.topology import Topology

POD_KINDS = ("pod", "pods", "po")
SCALE_KINDS = {"deployment": "Deployment", "deployments": "Deployment", "deploy": "Deployment",
               "replicaset": "ReplicaSet", "replicasets": "ReplicaSet", "rs": "ReplicaSet"}


def _print(lines: list[str]) -> None:
    """kubectl's one line per object."""
    out = console()
    for line in lines:
        out.print(line, highlight=False)


@click.command(
    epilog="""\b
Examples:
  netns-lab get pods -A -o wide                 # every pod, its address and node
  netns-lab get pods -n yaobank -l app=summary
  netns-lab get services -n yaobank             # cluster IPs and node ports
  netns-lab get endpointslices -n yaobank -o yaml
  netns-lab get nodes -o wide
  netns-lab get pod summary-767cb686f4-bv8xg -n yaobank -o json | jq .status.podIP
  netns-lab get felixconfiguration default      # calicoctl's view of the dataplane settings
"""
)
@lab_option
@namespace_default_option
@click.option("-A", "--all-namespaces", is_flag=True, help="Objects of every namespace.")
@selector_option
@click.argument("kind", metavar="KIND")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["wide", "yaml", "json"]), default=None, help="Output format (default: a table).")
def get(lab: str | None, namespace: str | None, all_namespaces: bool, selector: str | None, kind: str, name: str | None,
        output: str | None) -> int:
    """Show pods, services, endpointslices or nodes as kubectl does (and felixconfiguration default as calicoctl does)."""
    import yaml

    if kind.lower() in FELIX_KINDS:
        felix_target(kind, name or "")
        resource = lab_handle(lab).state().felix.to_resource()
        click.echo(json.dumps(resource, indent=2) if output == "json" else yaml.safe_dump(resource, sort_keys=False).rstrip())
        return 0
    which = views.kind_of(kind)
    if which is None:
        raise LabError(f"unknown resource kind {kind!r} (known: pods, services, endpointslices, nodes, felixconfiguration)")
    if all_namespaces and namespace:
        raise click.UsageError("give -n NS or -A, not both")
    st = lab_handle(lab).state()
    ns = None if all_namespaces else (namespace or "default")
    if ns is not None and ns not in st.k8s_namespaces():
        raise LabError(f"namespace {ns!r} not found in lab {st.lab!r} (namespaces: {', '.join(st.k8s_namespaces())}); "
                       f"{NAMESPACE_HINT}")
    items = views.View(st, pid_running).objects(which, name, ns)
    if selector and which == "pods":
        wanted = set(st.select_pods((), selector, ns))
        items = [o for o in items if o["metadata"]["name"] in wanted]
    if name is not None and not items:
        raise LabError(f'{which} "{name}" not found' + (f" in namespace {ns!r}" if which != "nodes" and ns else ""))
    doc = items[0] if name is not None else views.as_list(items)
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump(doc, sort_keys=False).rstrip())
    elif not items:
        click.echo(f"No resources found in {ns} namespace." if ns and which != "nodes" else "No resources found", err=True)
    else:
        click.echo(views.format_table(views.table(which, items, output == "wide", all_namespaces)))
    return 0


@click.command(
    epilog="""\b
Examples:
  netns-lab apply -f nginx.yaml              # a Deployment and its NodePort service, live
  netns-lab apply -f manifests/              # every .yaml/.yml/.json file of a directory
  cat app.yaml | netns-lab apply -f -
\b
Kinds the lab has no use for (ServiceAccount, ConfigMap, ...) are skipped with one line each.
""",
)
@lab_option
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR|-", help="Kubernetes YAML to apply.")
def apply(lab: str | None, files: tuple[str, ...]) -> int:
    """Create or update the manifest's objects in a running lab, as kubectl apply does; pods start, services follow."""
    docs, skipped = manifest.parse(manifest.read_sources(list(files)))
    require_root()
    _print(skipped + _manifest_change(lab, docs, manifest.apply))
    return 0


def _manifest_change(lab: str | None, docs: list[manifest.Doc],
                     op: Callable[[list[manifest.Doc], Topology], manifest.Result]) -> list[str]:
    """Apply `op` (manifest.apply or manifest.delete) to the running lab's topology, live; its lines and the pods'."""
    lines: list[str] = []

    def change(st: LabState, topo: Topology) -> Topology:
        result = op(docs, topo)
        lines.extend(result.lines)
        return result.topology

    done = lab_handle(lab).change(change)
    return lines + done


@click.command(
    "delete",
    epilog="""\b
Examples (the lesson restarts pods after enabling eBPF):
  netns-lab delete pod -n yaobank -l app=customer     # the lesson's line, as typed
  netns-lab delete pod -n yaobank -l app=summary      # both summary pods
  netns-lab delete pod customer-648964b964-k8sk4
  netns-lab delete pod summary-5d8b7c9f4-x2x7q -n yaobank --grace-period 30   # terminating for 30 s
  netns-lab delete -f app.yaml                        # the manifest's objects (and their pods)
\b
A Deployment's pod is replaced at once by a new pod with a new name and address, as its
ReplicaSet does; a bare pod is recreated under its name with a new address. The services'
backends follow (kube-proxy's rules, or the BPF maps in the eBPF modes).
\b
--grace-period S: the pod is Terminating for S seconds: it keeps running, connections open to
it keep working, new ones go to the other endpoints (to it only when no other is ready, as
kube-proxy falls back); then it goes, without another command. The command returns at once
(kubectl's --wait=false). Without the flag the pod goes at once (the lab's apps stop at
SIGTERM, so kubectl's default grace period would end at once too). As kubectl: --grace-period 0
means 1 unless --force is given, --now is --grace-period 1, --force deletes at once.
""",
)
@lab_option
@namespace_option
@click.argument("kind", metavar="pod", required=False)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--selector", metavar="KEY=VALUE", help="Delete the pods with these labels (e.g. app=summary).")
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE|DIR|-", help="Delete the objects of this Kubernetes YAML.")
@click.option("--grace-period", type=click.IntRange(min=-1), default=-1, show_default=True,
              help="Seconds the pod stays Terminating, serving open connections (-1: none, it goes at once).")
@click.option("--now", is_flag=True, help="The same as --grace-period 1.")
@click.option("--force", is_flag=True, help="Delete at once, bypassing graceful deletion (with --grace-period 0).")
def delete(lab: str | None, namespace: str | None, kind: str | None, names: tuple[str, ...], selector: str | None,
           files: tuple[str, ...], grace_period: int, now: bool, force: bool) -> int:
    """Delete pods (or a manifest's objects) as kubectl does; Deployments' pods are replaced, services follow."""
    grace = grace_seconds(grace_period, now, force)
    if files:
        if kind or names or selector:
            raise click.UsageError("give -f FILE or pod NAMEs/-l, not both")
        if grace is not None:
            raise click.UsageError("--grace-period and --now apply to pods (delete pod NAME), not to -f FILE")
        docs, _ = manifest.parse(manifest.read_sources(list(files)))
        require_root()
        _print(_manifest_change(lab, docs, manifest.delete))
        return 0
    if kind is None or kind.lower() not in POD_KINDS:
        raise LabError(f"unknown resource kind {kind!r}: delete pods (e.g. {PROG} delete pod -n yaobank -l app=customer) "
                       "or a manifest's objects (-f FILE)")
    if not names and not selector:
        raise click.UsageError("give pod NAMEs or -l KEY=VALUE")
    require_root()
    out = console()
    for ch in lab_handle(lab).delete_pods(names, selector, namespace, grace):
        out.print(_deleted_line(ch), highlight=False)
    return 0


def grace_seconds(grace_period: int, now: bool, force: bool) -> int | None:
    """kubectl's rules for the grace period asked: None to delete at once, else seconds (>= 1)."""
    if now:
        if grace_period != -1:
            raise click.UsageError("--now and --grace-period cannot be specified together")
        grace_period = 1
    if grace_period == 0 and not force:
        grace_period = 1  # kubectl: --grace-period=0 means 1 unless --force
    return grace_period if grace_period > 0 else None


def _deleted_line(ch: Any) -> str:
    """What a deleted pod's line says: replaced, recreated, terminating or gone."""
    if ch.terminating_until:
        then = (f'its ReplicaSet made pod "{ch.replacement}" on {ch.node} as {ch.new_ip}' if ch.replacement
                else "then it goes (a bare pod: recreated under its name)")
        return (f'pod "{ch.pod}" deleted: Terminating until {ch.terminating_until} (open connections served, '
                f"new ones go to other endpoints); {then} ({ch.seconds:.2f}s)")
    if ch.gone:
        return f'pod "{ch.pod}" deleted (was Terminating; its ReplicaSet\'s new pod already serves) ({ch.seconds:.2f}s)'
    if ch.replacement:
        return (f'pod "{ch.pod}" deleted; its ReplicaSet made pod "{ch.replacement}" on {ch.node} '
                f"as {ch.new_ip}, backends re-programmed ({ch.seconds:.2f}s)")
    return (f'pod "{ch.pod}" deleted; recreated on {ch.node} as {ch.new_ip} '
            f"(was {ch.old_ip}), backends re-programmed ({ch.seconds:.2f}s)")


@click.command(
    epilog="""\b
Examples:
  netns-lab scale deployment/summary -n yaobank --replicas 3
  netns-lab scale deployment/nginx --replicas 0
""",
)
@lab_option
@namespace_option
@click.argument("target", metavar="deployment/NAME")
@click.option("--replicas", type=click.IntRange(min=0), required=True, help="The number of pods wanted.")
def scale(lab: str | None, namespace: str | None, target: str, replicas: int) -> int:
    """Set a Deployment's (or ReplicaSet's) replicas; pods are added or removed live, services follow."""
    kind, sep, name = target.partition("/")
    if not sep or kind.lower() not in SCALE_KINDS or not name:
        raise click.UsageError(f"give deployment/NAME or replicaset/NAME, not {target!r}")
    require_root()
    lab_handle(lab).scale(SCALE_KINDS[kind.lower()], name, replicas, namespace)
    _print([f"{kind.lower()}.apps/{name} scaled"])
    return 0


COMMANDS = (get, apply, delete, scale)
