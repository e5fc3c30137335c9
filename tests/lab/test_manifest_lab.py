"""Kubernetes manifests on real labs (issue 12): the lesson from examples/yaobank.yaml, an nginx Deployment's
/clientip through its NodePort in every mode, kubectl views, and bad manifests that change nothing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import CLI, Lab, cli_lab, running_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]
YAOBANK = ROOT / "examples" / "yaobank.yaml"
HOST1 = "198.19.15.254"
NODES = {"control": "198.19.0.1", "node1": "198.19.0.2", "node2": "198.19.0.3"}
NGINX = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  namespace: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      containers:
        - name: nginx
          image: nginx:1.25
          ports:
            - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: nginx
  namespace: web
spec:
  type: NodePort
  selector: {app: nginx}
  ports:
    - port: 80
      nodePort: 30080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: nginx-conf
  namespace: web
data: {nginx.conf: ""}
"""
NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n---\n"


def test_the_lesson_from_the_manifest(tmp_path: Path) -> None:
    """`up --manifest examples/yaobank.yaml`, then `lesson`: every observation of the lesson."""
    with cli_lab("l", "--manifest", str(YAOBANK)) as lab:
        pods = json.loads(lab.run("get", "pods", "-A", "-o", "json").stdout)["items"]
        assert sorted(p["metadata"]["labels"]["app"] for p in pods) == ["customer", "database", "summary", "summary"]
        proc = lab.run("lesson", timeout=900)
        assert "Every observation matched the lesson's." in proc.stdout, proc.stdout
        assert "netns-lab logs -n yaobank -l app=customer --follow" in proc.stdout.replace(f"--name {lab.name} ", "")


@pytest.fixture(scope="module")
def nginx_lab(tmp_path_factory) -> Lab:
    """The lesson's nodes running an nginx Deployment of 3 behind NodePort 30080 (kube-proxy mode first)."""
    f = tmp_path_factory.mktemp("m") / "nginx.yaml"
    f.write_text(NAMESPACE + NGINX)
    with running_lab("g", manifests=[f, YAOBANK]) as lab:
        yield lab


def clientips(lab: Lab, node: str, n: int = 6) -> tuple[set[str], set[str]]:
    """From host1, `n` GETs of /clientip and /hostname through `node`'s NodePort: the source addresses and pods seen."""
    loop = (f"for i in $(seq {n}); do curl -sS --fail --max-time 5 {NODES[node]}:30080/clientip; echo; "
            f"curl -sS --fail --max-time 5 {NODES[node]}:30080/hostname; echo; done")
    lines = lab.exec("host1", "sh", "-c", loop).stdout.split()
    return {line.rsplit(":", 1)[0] for line in lines[0::2]}, set(lines[1::2])


@pytest.mark.parametrize("mode,expect", [
    ("kube-proxy", "ingress"),  # SNAT to the ingress node
    ("tunnel", "host1"),        # source IP preserved, replies tunnelled back
    ("dsr", "host1"),           # source IP preserved, replies straight from the backend's node
])
def test_nginx_clientip_through_the_nodeport(nginx_lab: Lab, mode: str, expect: str) -> None:
    if nginx_lab.status()["mode"] != mode:
        nginx_lab.run("mode", mode, timeout=300)
    pods = {p["metadata"]["name"] for p in json.loads(nginx_lab.run("get", "pods", "-n", "web", "-o", "json").stdout)["items"]}
    assert len(pods) == 3
    for node, addr in NODES.items():
        sources, served = clientips(nginx_lab, node)
        assert sources == {addr if expect == "ingress" else HOST1}, (mode, node, sources)
        assert served <= pods, served


def test_kubectl_views(nginx_lab: Lab) -> None:
    pods = json.loads(nginx_lab.run("get", "pods", "-A", "-o", "json").stdout)
    assert pods["kind"] == "List" and {p["kind"] for p in pods["items"]} == {"Pod"}
    web = [p for p in pods["items"] if p["metadata"]["namespace"] == "web"]
    assert len(web) == 3 and all(p["status"]["phase"] == "Running" for p in web)
    assert all(re.fullmatch(r"nginx-[a-z0-9]{1,10}-[a-z0-9]{5}", p["metadata"]["name"]) for p in web)
    assert {p["spec"]["nodeName"] for p in web} <= {"node1", "node2"}  # spread over workers, not control
    svc = json.loads(nginx_lab.run("get", "service", "nginx", "-n", "web", "-o", "json").stdout)
    assert (svc["spec"]["type"], svc["spec"]["ports"][0]["nodePort"]) == ("NodePort", 30080)
    eps = json.loads(nginx_lab.run("get", "endpointslices", "-n", "web", "-o", "json").stdout)["items"]
    assert sorted(e["addresses"][0] for e in eps[0]["endpoints"]) == sorted(p["status"]["podIP"] for p in web)
    wide = nginx_lab.run("get", "pods", "-A", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:3] == ["NAMESPACE", "NAME", "READY"] and len(wide) == 1 + 3 + 4
    nodes = nginx_lab.run("get", "nodes").stdout
    assert re.search(r"^control\s+Ready\s+control-plane", nodes, re.M)
    # the kube-proxy chain of the unnamed port is hashed from "web/nginx", as kube-proxy does
    felix = nginx_lab.run("get", "felixconfiguration", "default").stdout
    assert "kind: FelixConfiguration" in felix


def test_scale_and_delete_pod_follow_live(nginx_lab: Lab, tmp_path: Path) -> None:
    def web() -> dict[str, str]:
        items = json.loads(nginx_lab.run("get", "pods", "-n", "web", "-o", "json").stdout)["items"]
        return {p["metadata"]["name"]: p["status"]["podIP"] for p in items}

    nginx_lab.run("scale", "deployment/nginx", "-n", "web", "--replicas", "1")
    (one,) = web()
    assert clientips(nginx_lab, "node2", 3)[1] == {one}
    nginx_lab.run("delete", "pod", "-n", "web", one)
    (replacement,) = web()
    assert replacement != one and clientips(nginx_lab, "control", 3)[1] == {replacement}
    nginx_lab.run("scale", "deployment/nginx", "-n", "web", "--replicas", "3")
    assert len(web()) == 3
    eps = json.loads(nginx_lab.run("get", "endpointslices", "-n", "web", "-o", "json").stdout)["items"][0]["endpoints"]
    assert sorted(e["addresses"][0] for e in eps) == sorted(web().values())


BAD = [
    ("nodePort held by yaobank/customer", ("nodePort: 30080", "nodePort: 30180"),
     "spec.ports[0].nodePort: node port 30180 is already allocated to service yaobank/customer"),
    ("unknown node", ("      containers:", "      nodeName: node7\n      containers:"),
     "spec.template.spec.nodeName: unknown node 'node7'"),
    ("bad YAML", ("  replicas: 3", "  replicas: [3"), "invalid YAML"),
    ("selector mismatch", ("matchLabels: {app: nginx}", "matchLabels: {app: web}"), "selector does not match template labels"),
]


@pytest.mark.parametrize("what,change,message", BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_on_a_running_lab_changes_nothing(nginx_lab: Lab, tmp_path: Path, what: str, change: tuple[str, str],
                                                       message: str) -> None:
    f = tmp_path / "bad.yaml"
    text = NGINX.replace("name: nginx\n  namespace: web", "name: other\n  namespace: web").replace(*change)
    f.write_text(text)
    before = nginx_lab.run("get", "pods", "-A", "-o", "json").stdout
    proc = nginx_lab.run("apply", "-f", str(f), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith(f"netns-lab: error: {f}:line ")
    assert nginx_lab.run("get", "pods", "-A", "-o", "json").stdout == before
    assert "Welcome to YAO Bank" in nginx_lab.curl("198.19.0.1:30180")
    assert nginx_lab.curl("198.19.0.2:30080/echo?msg=still-serving") == "still-serving"


def test_apply_and_delete_a_manifest_live(nginx_lab: Lab, tmp_path: Path) -> None:
    f = tmp_path / "echo.yaml"
    f.write_text("""\
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: web, labels: {app: echo}}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: echo, image: registry.k8s.io/e2e-test-images/agnhost:2.45, ports: [{containerPort: 5353, protocol: UDP, name: dns}, {containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: web}
spec:
  type: NodePort
  selector: {app: echo}
  ports:
    - {name: dns, protocol: UDP, port: 53, targetPort: dns}
    - {name: http, port: 80, targetPort: 8080}
""")
    out = nginx_lab.run("apply", "-f", str(f)).stdout
    assert "pod/echo created" in out and "service/echo created" in out
    svc = json.loads(nginx_lab.run("get", "svc", "echo", "-n", "web", "-o", "json").stdout)
    http_np = next(p["nodePort"] for p in svc["spec"]["ports"] if p["name"] == "http")
    assert 30000 <= http_np <= 32767 and http_np not in (30080, 30180, 30107)
    assert nginx_lab.curl(f"198.19.0.1:{http_np}/hostname") == "echo"
    udp_np = next(p["nodePort"] for p in svc["spec"]["ports"] if p["name"] == "dns")
    script = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); "
              f"s.sendto(b'ping', ('198.19.0.1', {udp_np})); print(s.recvfrom(100)[0].decode())")
    assert nginx_lab.exec("host1", "python3", "-c", script).stdout.strip() == "ping"
    out = nginx_lab.run("delete", "-f", str(f)).stdout
    assert "pod/echo deleted" in out and "service/echo deleted" in out
    assert "echo" not in nginx_lab.run("get", "pods", "-n", "web").stdout
    proc = nginx_lab.exec("host1", "curl", "-sS", "--max-time", "2", f"198.19.0.1:{http_np}/hostname", check=False)
    assert proc.returncode != 0


def test_lab_from_environment_and_lesson_lines_as_typed(nginx_lab: Lab) -> None:
    env = {"NETNS_LAB": nginx_lab.name, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT)}
    nginx_lab.curl("198.19.0.1:30180")
    proc = subprocess.run([*CLI, "logs", "-n", "yaobank", "-l", "app=customer"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and re.search(r'^\S+ - - \[[^]]+\] "GET / HTTP/1.1" 200 -$', proc.stdout, re.M), proc.stderr
    proc = subprocess.run([*CLI, "status", "-n", "yaobank"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "-n/--namespace is now the Kubernetes namespace" in proc.stderr
