"""Kubernetes manifests -> Topology: the yaobank manifest, names and placement, apply/delete, and one line per bad manifest."""

from __future__ import annotations

import io
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netns_lab.errors import LabError
from netns_lab.k8s import manifest, names
from netns_lab.topology import Topology, default_hosts, default_nodes, plan, topology_from_dict, topology_to_dict

YAOBANK = Path(__file__).resolve().parents[2] / "examples" / "yaobank.yaml"


def base() -> Topology:
    """The lesson's nodes and host, nothing running."""
    return Topology(default_nodes(), default_hosts())


def load_text(text: str, topo: Topology | None = None) -> manifest.Result:
    """Apply a manifest given as text (read as stdin)."""
    return manifest.load(["-"], topo or base(), io.StringIO(text))


def test_yaobank_manifest_is_the_lessons_lab() -> None:
    r = manifest.load([str(YAOBANK)], base())
    topo = r.topology
    p = plan(topo)
    by_app = {}
    for pod in topo.pods:
        by_app.setdefault(pod.labels["app"], []).append((pod.node, str(p.pod_ips[pod.name])))
    # the addresses docs/conventions.md gives: customer on node1 is .65, summary on both workers
    assert by_app == {
        "customer": [("node1", "198.19.16.65")],
        "summary": [("node2", "198.19.16.129"), ("node1", "198.19.16.66")],
        "database": [("node2", "198.19.16.130")],
    }
    customer = topo.service("customer", "yaobank")
    assert customer.type == "NodePort" and customer.cluster_ip == "198.19.32.10"
    assert [(sp.name, sp.protocol, sp.node_port) for sp in customer.ports] == [("http", "TCP", 30180), ("echo", "UDP", 30107)]
    assert {s.name: s.cluster_ip for s in topo.services} == {
        "customer": "198.19.32.10", "summary": "198.19.32.11", "database": "198.19.32.12"}
    assert [line for line in r.lines if "skipped" in line] == [
        f"serviceaccount/{n} skipped: the lab has no use for a ServiceAccount" for n in ("customer", "summary", "database")]
    # the named targetPort `echo` reaches the customer pod's UDP 7
    echo = customer.ports[1]
    assert [(b.ip, b.port) for b in p.backends(customer, echo)] == [("198.19.16.65", 7)]
    assert topology_from_dict(topology_to_dict(topo)) == topo


def test_pod_names_are_kubernetes_shaped_and_stable() -> None:
    a = manifest.load([str(YAOBANK)], base()).topology
    b = manifest.load([str(YAOBANK)], base()).topology
    assert [p.name for p in a.pods] == [p.name for p in b.pods]
    for pod in a.pods:
        deployment, rs_hash, suffix = pod.name.rsplit("-", 2)
        assert deployment == pod.labels["app"] and pod.owner == f"{deployment}-{rs_hash}"
        assert pod.labels["pod-template-hash"] == rs_hash and 1 <= len(rs_hash) <= 10
        assert len(suffix) == 5 and set(rs_hash + suffix) <= set(names.SAFE_ALPHABET)


def test_template_change_makes_a_new_replicaset_and_scaling_keeps_pods() -> None:
    topo = manifest.load([str(YAOBANK)], base()).topology
    before = {p.name for p in topo.pods if p.labels["app"] == "summary"}
    text = YAOBANK.read_text()
    scaled = load_text(text.replace("replicas: 2", "replicas: 3"), topo).topology
    now = {p.name for p in scaled.pods if p.labels["app"] == "summary"}
    assert before < now and len(now) == 3
    changed = load_text(text.replace("yaobank-summary:certification", "yaobank-summary:v2"), topo).topology
    new = [p for p in changed.pods if p.labels["app"] == "summary"]
    assert len(new) == 2 and not before & {p.name for p in new}
    assert len({p.owner for p in new}) == 1 and new[0].owner not in {p.owner for p in topo.pods}


def test_replace_pod_gives_a_new_name_on_the_same_replicaset() -> None:
    topo = manifest.load([str(YAOBANK)], base()).topology
    old = next(p for p in topo.pods if p.labels["app"] == "customer")
    new = manifest.replace_pod(topo, old.name)
    assert new is not None and new.name != old.name and new.owner == old.owner
    assert [p.name for p in topo.pods if p.labels["app"] == "customer"] == [new.name]


NGINX = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: nginx}
spec:
  replicas: 3
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      containers:
        - name: nginx
          image: nginx:1.25
          ports: [{containerPort: 80, name: web}]
---
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  type: NodePort
  selector: {app: nginx}
  ports: [{port: 8080, targetPort: web}]
"""


def test_generic_deployment_spreads_and_gets_allocations() -> None:
    topo = load_text(NGINX).topology
    pods = [p for p in topo.pods if p.namespace == "default"]
    assert [p.node for p in pods] == ["node1", "node2", "node1"]
    assert {p.app for p in pods} == {"testserver"}
    svc = topo.service("nginx")
    assert (svc.cluster_ip, svc.ports[0].name, svc.ports[0].node_port) == ("198.19.32.10", "", 30000)
    p = plan(topo)
    assert sorted(b.port for b in p.backends(svc, svc.ports[0])) == [80, 80, 80]


def test_placement_by_node_name_and_hostname_selector() -> None:
    text = NGINX.replace("    spec:\n      containers:", "    spec:\n      nodeSelector: {kubernetes.io/hostname: node2}\n      containers:")
    assert {p.node for p in load_text(text).topology.pods} == {"node2"}
    text = NGINX.replace("    spec:\n      containers:", "    spec:\n      nodeName: control\n      containers:")
    assert {p.node for p in load_text(text).topology.pods} == {"control"}


def test_headless_service_and_annotation_choose() -> None:
    text = NGINX.replace("  type: NodePort\n", "  clusterIP: None\n").replace(
        "    metadata: {labels: {app: nginx}}", "    metadata: {labels: {app: nginx}, annotations: {netns-lab/app: database}}")
    topo = load_text(text).topology
    assert topo.service("nginx").headless and topo.service("nginx").ports[0].node_port is None
    assert {p.app for p in topo.pods} == {"database"}


def test_delete_takes_the_objects_and_their_pods() -> None:
    topo = load_text(NGINX).topology
    docs, _ = manifest.parse([manifest.Source("n.yaml", NGINX)])
    gone = manifest.delete(docs, topo).topology
    assert gone.pods == [] and gone.services == [] and gone.workloads == []


def test_delete_of_a_file_that_starts_with_its_namespace() -> None:
    """kubectl delete -f of the file `apply` took: the Namespace first, then the objects in it."""
    text = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n---\n"
            + NGINX.replace("metadata: {name: nginx}", "metadata: {name: nginx, namespace: web}"))
    docs, _ = manifest.parse([manifest.Source("web.yaml", text)])
    result = manifest.delete(docs, load_text(text).topology)
    assert result.topology.pods == [] and result.topology.services == [] and result.topology.workloads == []
    assert "web" not in result.topology.all_namespaces()
    assert result.lines == ["namespace/web deleted", "deployment/nginx deleted", "service/nginx deleted"]
    with pytest.raises(LabError, match="web.yaml:line 7: Deployment web/nginx: metadata.name: not found"):
        manifest.delete(docs, load_text(text.split("---\n", 1)[0] + "---\n" + text.split("---\n")[2]).topology)


def test_multi_document_directory_and_list(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(NGINX.split("---\n")[0])
    (tmp_path / "b.yml").write_text("---\n" + NGINX.split("---\n")[1] + "---\n")
    (tmp_path / "notes.txt").write_text("not a manifest")
    topo = manifest.load([str(tmp_path)], base()).topology
    assert len(topo.pods) == 3 and topo.service("nginx")


def _err(text: str, topo: Topology | None = None) -> str:
    with pytest.raises(LabError) as exc:
        load_text(text, topo)
    return str(exc.value)


BAD = [
    # (what, change to NGINX, the one line)
    ("yaml", ("ports: [{port: 8080", "ports: [{port: [8080"), "<stdin>:line 21: invalid YAML: expected ',' or ']'"),
    ("no kind", ("kind: Service\n", ""), "<stdin>:line 15: kind: missing or not a string"),
    ("no name", ("metadata: {name: nginx}\nspec:\n  type", "metadata: {}\nspec:\n  type"),
     "<stdin>:line 17: Service: metadata.name: missing or not a string"),
    ("port not a number", ("port: 8080", "port: http"),
     "<stdin>:line 21: Service default/nginx: spec.ports[0].port: expected an integer, got a string"),
    ("nodePort out of range", ("targetPort: web}", "targetPort: web, nodePort: 80}"),
     "<stdin>:line 21: Service default/nginx: spec.ports[0].nodePort: node port 80 outside 30000-32767"),
    ("clusterIP outside the CIDR", ("  type: NodePort\n", "  type: NodePort\n  clusterIP: 10.0.0.1\n"),
     "<stdin>:line 20: Service default/nginx: spec.clusterIP: 10.0.0.1 is not a usable address of the service CIDR 198.19.32.0/20"),
    ("named targetPort missing", ("targetPort: web", "targetPort: www"),
     "<stdin>:line 21: Service default/nginx: spec.ports[0].targetPort: backend pod"),
    ("numeric targetPort not declared", ("targetPort: web", "targetPort: 81"),
     "<stdin>:line 21: Service default/nginx: spec.ports[0].targetPort: backend pod nginx-"),
    ("unknown node", ("    spec:\n      containers:", "    spec:\n      nodeName: node9\n      containers:"),
     "<stdin>:line 10: Deployment default/nginx: spec.template.spec.nodeName: unknown node 'node9' (nodes: control, node1, node2)"),
    ("other node label", ("    spec:\n      containers:", "    spec:\n      nodeSelector: {disk: ssd}\n      containers:"),
     "<stdin>:line 10: Deployment default/nginx: spec.template.spec.nodeSelector.disk: the lab's nodes have no label disk=ssd"),
    ("selector mismatch", ("matchLabels: {app: nginx}", "matchLabels: {app: web}"),
     "<stdin>:line 8: Deployment default/nginx: spec.template.metadata.labels: selector does not match template labels"),
    ("no image", ("          image: nginx:1.25\n", ""),
     "<stdin>:line 11: Deployment default/nginx: spec.template.spec.containers[0].image: missing required field"),
    ("bad protocol", ("name: web}]", "name: web, protocol: SCTP}]"),
     "<stdin>:line 13: Deployment default/nginx: spec.template.spec.containers[0].ports[0].protocol: unsupported protocol 'SCTP'"),
    ("unknown namespace", ("metadata: {name: nginx}\nspec:\n  type", "metadata: {name: nginx, namespace: shop}\nspec:\n  type"),
     "<stdin>:line 17: Service shop/nginx: metadata.namespace: namespace 'shop' not found (add a Namespace object)"),
    ("ExternalName", ("type: NodePort", "type: ExternalName"),
     "<stdin>:line 19: Service default/nginx: spec.type: service type 'ExternalName' is not supported"),
    ("unknown app annotation", ("{labels: {app: nginx}}", "{labels: {app: nginx}, annotations: {netns-lab/app: redis}}"),
     "<stdin>:line 8: Deployment default/nginx: spec.template.metadata.annotations.netns-lab/app: unknown app 'redis'"),
    ("negative replicas", ("replicas: 3", "replicas: -1"),
     "<stdin>:line 5: Deployment default/nginx: spec.replicas: replicas -1 must not be negative"),
    ("twice", ("---\n", "---\n" + NGINX.split("---\n")[1] + "---\n"),
     "<stdin>:line 25: Service default/nginx: metadata.name: defined twice (first at <stdin>:line 15)"),
    ("unnamed ports", ("ports: [{port: 8080, targetPort: web}]", "ports: [{port: 8080, targetPort: web}, {port: 8081, targetPort: web}]"),
     "<stdin>:line 21: Service default/nginx: spec.ports[0].name: a service with more than one port must name each of them"),
]


@pytest.mark.parametrize("what,change,line", BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_is_one_line(what: str, change: tuple[str, str], line: str) -> None:
    text = NGINX.replace(*change)
    assert text != NGINX, what
    msg = _err(text)
    assert "\n" not in msg
    assert msg.startswith(line), msg


def test_nodeport_on_a_clusterip_service_is_refused() -> None:
    text = NGINX.replace("  type: NodePort\n", "").replace("targetPort: web}", "targetPort: web, nodePort: 30001}")
    assert _err(text).endswith("spec.ports[0].nodePort: a ClusterIP service has no node port (set type: NodePort)")


@pytest.mark.parametrize(
    "field,value,line",
    [
        ("clusterIP", "198.19.32.10", "spec.clusterIP: 198.19.32.10 is already allocated to service yaobank/customer"),
        ("nodePort", "30180", "spec.ports[0].nodePort: node port 30180 is already allocated to service yaobank/customer"),
    ],
)
def test_clashes_with_a_running_lab_are_refused(field: str, value: str, line: str) -> None:
    lab = manifest.load([str(YAOBANK)], base()).topology
    text = NGINX.replace("targetPort: web}", f"targetPort: web, {field}: {value}}}" if field == "nodePort" else "targetPort: web}")
    if field == "clusterIP":
        text = text.replace("  type: NodePort\n", f"  type: NodePort\n  clusterIP: {value}\n")
    before = topology_to_dict(lab)
    assert _err(text, lab).endswith(line)
    assert topology_to_dict(lab) == before  # nothing changed


def test_pod_name_taken_in_another_namespace() -> None:
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: %s}\nspec:\n  containers: [{name: c, image: nginx}]\n"
    first = load_text(pod % "default").topology
    assert "pod name 'web' is taken by pod default/web" in _err("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n" + pod % "shop", first)


def test_cluster_ips_follow_the_allocation_rule() -> None:
    topo = load_text(NGINX).topology
    assert IPv4Address(topo.service("nginx").cluster_ip) == IPv4Address("198.19.32.0") + manifest.CLUSTER_IP_OFFSET


@pytest.mark.parametrize("patch,field", [
    ({"spec": {"externalTrafficPolicyy": "Local"}}, "spec.externalTrafficPolicyy"),
    ({"spce": {"type": "NodePort"}}, "spce"),
])
def test_service_patch_with_an_unknown_field_is_refused(patch: dict, field: str) -> None:
    """A typo in `patch service -p` is one clear line (kubectl's strict field validation), not "patched (no change)"."""
    from netns_lab.k8s import patch as k8s_patch

    topo = load_text(NGINX).topology
    with pytest.raises(LabError, match=f'unknown field "{field}"'):
        k8s_patch.patch_service(topo, "nginx", "default", patch, lambda svc: {})
    k8s_patch.check_fields({"spec": {"externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP"}, "metadata": {}})
