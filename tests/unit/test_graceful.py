"""Graceful deletion without a lab: kubectl's grace-period rules, the terminating mark through topology,
ReplicaSet and endpoints, the views, and the eBPF selection set (terminating backends past `count`)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ebpf_nodeport.abi import BeKey, BeValue, FeValue, int2ip
from ebpf_nodeport.sync import Backend, ClusterView, Service, _Desired, selectable
from netns_lab import graceful
from netns_lab.cli import cli as cli_main
from netns_lab.commands.kubectl import grace_seconds
from netns_lab.k8s import manifest
from netns_lab.policy import usable
from netns_lab.state import service_records
from netns_lab.topology import Topology, default_hosts, default_nodes, plan, topology_from_dict, topology_to_dict

YAOBANK = Path(__file__).resolve().parents[2] / "examples" / "yaobank.yaml"

# (--grace-period, --now, --force) -> seconds terminating (None: at once), as kubectl reads them
GRACE_CASES = [
    ((-1, False, False), None),   # no flag: at once (the lab's apps stop at SIGTERM)
    ((30, False, False), 30),
    ((0, False, False), 1),       # kubectl: 0 means 1 unless --force
    ((0, False, True), None),     # --force --grace-period 0: immediate
    ((-1, False, True), None),    # --force alone: immediate
    ((-1, True, False), 1),       # --now = --grace-period 1
    ((5, False, True), 5),        # --force with a grace period: graceful, as kubectl passes it on
]


@pytest.mark.parametrize("flags, want", GRACE_CASES)
def test_grace_period_flags_follow_kubectl(flags: tuple[int, bool, bool], want: int | None) -> None:
    assert grace_seconds(*flags) == want


def test_now_and_grace_period_together_are_refused() -> None:
    with pytest.raises(click.UsageError, match="--now and --grace-period cannot be specified together"):
        grace_seconds(10, True, False)


@pytest.mark.parametrize("args, message", [
    (["--grace-period", "-2"], "-2 is not in the range"),
    (["--grace-period", "x"], "'x' is not a valid integer"),
    (["--now", "--grace-period", "3"], "--now and --grace-period cannot be specified together"),
])
def test_bad_grace_flags_are_one_line_and_touch_nothing(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_main, ["delete", "--name", "nolabhere", "pod", "web", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def yaobank() -> Topology:
    """The lesson's lab as manifests make it."""
    return manifest.load([str(YAOBANK)], Topology(default_nodes(), default_hosts())).topology


def test_terminating_pod_stays_its_replicaset_replaces_it_and_endpoints_say_so() -> None:
    topo = yaobank()
    summary = topo.service("summary", "yaobank")
    old = next(p for p in topo.pods if p.labels["app"] == "summary")
    stamp = graceful.deletion_timestamp(10, now=1_000_000.2)
    assert stamp == "1970-01-12T13:46:51Z" and graceful.deadline(stamp) == 1_000_011
    new = manifest.terminate_pod(topo, old.name, stamp, 10)
    assert new is not None and new.owner == old.owner
    assert topo.pod(old.name).terminating and not new.terminating
    wl = next(w for w in topo.workloads if w.name == "summary")
    assert old.name not in [p.name for p in manifest.owned_pods(topo, wl)]  # a ReplicaSet counts active pods only
    manifest.scale(topo, wl, 2)
    assert topo.pod(old.name).terminating and len(manifest.owned_pods(topo, wl)) == 2  # scaling leaves it alone
    # a second graceful delete of the terminating pod makes no second replacement
    assert manifest.terminate_pod(topo, old.name, stamp, 10) is None
    assert topology_from_dict(topology_to_dict(topo)) == topo  # the mark round-trips through the state
    p = plan(topo)
    marks = {b.pod: b.terminating for b in p.backends(summary, summary.ports[0])}
    assert marks[old.name] is True and sum(marks.values()) == 1
    recs = {b.pod: b.terminating for s in service_records(topo, p) if s.name == "yaobank/summary" for b in s.ports[0].backends}
    assert recs == marks


def test_replace_pod_of_a_terminating_pod_makes_no_second_replacement() -> None:
    topo = yaobank()
    old = next(p for p in topo.pods if p.labels["app"] == "customer")
    manifest.terminate_pod(topo, old.name, graceful.deletion_timestamp(5), 5)
    before = [p.name for p in topo.pods]
    assert manifest.replace_pod(topo, old.name) is None
    assert [p.name for p in topo.pods] == [n for n in before if n != old.name]


class _Ep:
    def __init__(self, node: str, terminating: bool):
        self.node, self.terminating = node, terminating


@pytest.mark.parametrize("marks, want", [
    ((False, True, False), [0, 2]),   # ready ones only
    ((True, True), [0, 1]),           # none ready: the terminating ones (the fallback)
    ((), []),
])
def test_usable_and_selectable_are_kube_proxys_rule(marks: tuple[bool, ...], want: list[int]) -> None:
    eps = [_Ep("n", t) for t in marks]
    assert [eps.index(e) for e in usable(eps)] == want
    bes = [Backend(f"10.0.0.{i + 1}", 80, t) for i, t in enumerate(marks)]
    assert [bes.index(b) for b in selectable(bes)] == want


def test_terminating_backends_sit_past_count_in_nat_be() -> None:
    svc = Service("web", "tcp", "10.96.0.10", 80, backends=[
        Backend("198.19.16.65", 8080, True), Backend("198.19.16.129", 8080), Backend("198.19.16.66", 8080)])
    view = ClusterView({"node1": "198.19.0.2"}, {"198.19.16.64/26": "198.19.0.2"}, [svc])
    entries = _Desired("198.19.0.2", view, {}).service(svc)
    (_, fe), = entries.fes
    fe_value = FeValue.from_bytes(fe)
    assert (fe_value.count, fe_value.local_count) == (2, 1)
    order = {BeKey.from_bytes(k).ordinal: BeValue.from_bytes(v) for k, v in entries.bes}
    # the local ready one, the remote ready one, then the terminating one past count (never picked)
    assert [(int2ip(order[i].addr), order[i].port) for i in range(3)] == [
        ("198.19.16.66", 8080), ("198.19.16.129", 8080), ("198.19.16.65", 8080)]
