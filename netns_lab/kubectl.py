"""kubectl's writing commands on a running lab: `apply -f`, `delete -f`, `delete pod`, `scale`.

Each reads the lab's normalised topology, changes it as Kubernetes would (k8s/manifest.py),
and hands the result to k8s/live.py, which moves the running lab there under the lab's lock.
A bad manifest is refused before anything is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from netns_lab import state as lab_state
from netns_lab.cli import _ready_lab, _select_pods, cli, console, lab_option, lab_topology, load_lab, namespace_option, require_root
from netns_lab.errors import LabError
from netns_lab.k8s import live, manifest
from netns_lab.topology import Topology


def _change(lab: str, change: Callable[[dict[str, Any], Topology], tuple[Topology, list[str]]]) -> list[str]:
    """Under the lab's lock: compute the new topology from the current one, move the lab there, save; what was done."""
    load_lab(lab)  # before the lock, which would create the lab's directory
    with lab_state.lock(lab):
        st = _ready_lab(lab)
        new, lines = change(st, lab_topology(st)[0])
        try:
            lines += live.reconcile(st, new)
        finally:
            lab_state.save(lab, st)
    return lines


def _print(lines: list[str]) -> None:
    """kubectl's one line per object."""
    out = console()
    for line in lines:
        out.print(line, highlight=False)


@cli.command(
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

    def change(st: dict[str, Any], topo: Topology) -> tuple[Topology, list[str]]:
        result = manifest.apply(docs, topo)
        return result.topology, skipped + result.lines

    _print(_change(lab or "default", change))
    return 0


def delete_files(lab: str, files: list[str]) -> int:
    """`delete -f`: the manifest's objects (and their pods) leave the running lab."""
    docs, _ = manifest.parse(manifest.read_sources(files))
    require_root()

    def change(st: dict[str, Any], topo: Topology) -> tuple[Topology, list[str]]:
        result = manifest.delete(docs, topo)
        return result.topology, result.lines

    _print(_change(lab, change))
    return 0


def delete_pods(lab: str, names: tuple[str, ...], selector: str | None, namespace: str | None) -> int:
    """`delete pod`: a ReplicaSet's pod is replaced by a new one (new name), a bare pod recreated under its name."""
    from netns_lab import dataplane

    out = console()
    load_lab(lab)
    with lab_state.lock(lab):
        st = _ready_lab(lab)
        for name in _select_pods(st, names, selector, namespace):
            topo = lab_topology(st)[0]
            try:
                new = manifest.replace_pod(topo, name)
                if new is not None:
                    live.reconcile(st, topo)
                    out.print(f'pod "{name}" deleted; its ReplicaSet made pod "{new.name}" on {new.node} '
                              f'as {st["pods"][new.name]["ip"]}, backends re-programmed', highlight=False)
                    continue
                ch = dataplane.delete_pod(st, name)
            finally:
                lab_state.save(lab, st)
            out.print(f'pod "{name}" deleted; recreated on {st["pods"][name]["node"]} as {ch.new_ip} '
                      f"(was {ch.old_ip}), backends re-programmed ({ch.seconds:.2f}s)", highlight=False)
    return 0


@cli.command(
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
    kinds = {"deployment": "Deployment", "deployments": "Deployment", "deploy": "Deployment",
             "replicaset": "ReplicaSet", "replicasets": "ReplicaSet", "rs": "ReplicaSet"}
    if not sep or kind.lower() not in kinds or not name:
        raise click.UsageError(f"give deployment/NAME or replicaset/NAME, not {target!r}")
    require_root()

    def change(st: dict[str, Any], topo: Topology) -> tuple[Topology, list[str]]:
        found = [w for w in topo.workloads if w.kind == kinds[kind.lower()] and w.name == name
                 and (namespace is None or w.namespace == namespace)]
        if not found:
            where = f" in namespace {namespace!r}" if namespace else ""
            raise LabError(f'{kind.lower()} "{name}" not found{where}')
        manifest.scale(topo, found[0], replicas)
        return topo, [f"{kind.lower()}.apps/{name} scaled"]

    _print(_change(lab or "default", change))
    return 0
