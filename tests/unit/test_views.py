"""kubectl-shaped views of a lab's state: Kubernetes object JSON, tables, namespaces, EndpointSlices from backends."""

from __future__ import annotations

import pytest

from netns_lab.k8s import views
from netns_lab.k8s.manifest import default_lab
from netns_lab.state import LabState
from netns_lab.topology import plan


@pytest.fixture
def view() -> views.View:
    topo = default_lab()
    st = LabState.new("v", topo, plan(topo), "kube-proxy")
    for i, rec in enumerate(st.pods.values()):
        rec.pid = 1000 + i
    return views.View(st, running=lambda pid: pid is not None)


def test_pod_objects_have_the_kubernetes_shape(view: views.View) -> None:
    pods = view.objects("pods", None, "yaobank")
    customer = next(p for p in pods if p["metadata"]["labels"]["app"] == "customer")
    assert (customer["apiVersion"], customer["kind"]) == ("v1", "Pod")
    assert customer["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert customer["metadata"]["ownerReferences"][0]["name"] == customer["metadata"]["name"].rsplit("-", 1)[0]
    assert customer["spec"]["containers"][0]["image"] == "calico/yaobank-customer:certification"
    assert customer["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80, "protocol": "TCP"}, {"name": "echo", "containerPort": 7, "protocol": "UDP"}]
    assert (customer["status"]["podIP"], customer["status"]["hostIP"], customer["status"]["phase"]) == (
        "198.19.16.65", "198.19.0.2", "Running")
    assert view.objects("pods", None, "default") == []


def test_endpointslices_follow_the_backends(view: views.View) -> None:
    (summary,) = [o for o in view.objects("endpointslices", None, "yaobank")
                  if o["metadata"]["labels"]["kubernetes.io/service-name"] == "summary"]
    assert [e["addresses"] for e in summary["endpoints"]] == [["198.19.16.66"], ["198.19.16.129"]]
    view.st.services[1].ports[0].backends.pop()
    (summary,) = view.objects("endpointslices", "summary-" + summary["metadata"]["name"].split("-")[1], "yaobank")
    assert len(summary["endpoints"]) == 1


@pytest.mark.parametrize("kind", ["pods", "services", "endpointslices", "nodes"])
def test_objects_come_in_kubectls_order(view: views.View, kind: str) -> None:
    """Namespace, then name (the API server's key order), not the order the lab made them in."""
    view.topo.pods.reverse()
    view.topo.services.reverse()
    view.topo.nodes.reverse()
    keys = [(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in view.objects(kind, None, None)]
    assert len(keys) > 1 and keys == sorted(keys)


@pytest.mark.parametrize(
    "kind,wide,header,row",
    [
        ("services", False, ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
         ["yaobank", "customer", "NodePort", "198.19.32.10", "<none>", "80:30180/TCP,7:30107/UDP"]),
        ("pods", True, ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
         ["yaobank", "customer-648964b964-k8sk4", "1/1", "Running", "0"]),
        ("nodes", False, ["NAME", "STATUS", "ROLES", "AGE", "VERSION"], ["control", "Ready", "control-plane"]),
        ("endpointslices", False, ["NAMESPACE", "NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], ["yaobank"]),
    ],
)
def test_tables_are_kubectls(view: views.View, kind: str, wide: bool, header: list[str], row: list[str]) -> None:
    rows = views.table(kind, view.objects(kind, None, None), wide, all_namespaces=True)
    assert rows[0] == header
    assert rows[1][: len(row)] == row
    text = views.format_table(rows)
    assert text.splitlines()[0].startswith(header[0] + " ")


@pytest.mark.parametrize("word,kind", [("po", "pods"), ("svc", "services"), ("Services", "services"),
                                       ("endpointslice", "endpointslices"), ("no", "nodes"), ("deploy", None)])
def test_kind_spellings(word: str, kind: str | None) -> None:
    assert views.kind_of(word) == kind


def test_age_like_kubectl() -> None:
    import time

    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3 * 86400 - 5))
    assert views.age(stamp, now) == "3d"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 42))
    assert views.age(stamp, now) == "42s"
