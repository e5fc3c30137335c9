"""Graceful termination (`delete pod --grace-period S`) in every mode, on a real lab.

One lab per mode (tests/lab/data/graceful.yaml): a two-replica Deployment `web` (NodePort
30118) and a bare pod `solo` with its own service (NodePort 30119), both the generic test
server, whose GET /hostname answers with the pod's name. host1 reaches the NodePorts through
control, which runs no pod, so the eBPF modes tunnel (or return directly, DSR) to the backends.

kube-proxy is the reference: a terminating endpoint loses its KUBE-SEP chain (no new
connection), its conntrack entries stay (open connections go on), and it is used again when no
endpoint is ready (KEP-1669's fallback). The eBPF modes: terminating backends out of the
selection set, their CT entries kept. Removal checks: docs/traffic-policies.md.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import CLI, Lab, lab_namespaces, processes_with_lab_arg, running_lab, time_scale, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

DATA = Path(__file__).parent / "data"
MODES = ("kube-proxy", "kube-proxy-nft", "tunnel", "dsr")
CONTROL = "198.19.0.1"
WEB, SOLO = 30118, 30119
# One keep-alive connection: GET /hostname every 200 ms for argv[3] seconds; prints "<time> <pod>" per
# answer, or "<time> ERR <what>" and stops when the connection fails.
KEEPALIVE = (
    "import http.client, sys, time\n"
    "c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=3)\n"
    "end = time.time() + float(sys.argv[3])\n"
    "while time.time() < end:\n"
    "    try:\n"
    "        c.request('GET', '/hostname'); body = c.getresponse().read().decode()\n"
    "    except Exception as exc:\n"
    "        print(time.time(), 'ERR', repr(exc), flush=True); break\n"
    "    print(time.time(), body, flush=True); time.sleep(0.2)\n"
)
# argv[3] new connections, one request each: the answering pods (or ERR) as a JSON list.
NEW_CONNECTIONS = (
    "import http.client, json, sys\n"
    "out = []\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=3)\n"
    "    try:\n"
    "        c.request('GET', '/hostname'); out.append(c.getresponse().read().decode())\n"
    "    except Exception as exc:\n"
    "        out.append('ERR ' + repr(exc))\n"
    "    c.close()\n"
    "print(json.dumps(out))\n"
)


@pytest.fixture(scope="module", params=MODES)
def glab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The graceful-termination lab in one mode (the last test takes it down itself)."""
    with running_lab("gr", request.param, manifests=[DATA / "graceful.yaml"]) as lab:
        yield lab


def new_connections(lab: Lab, port: int, n: int, member: str = "host1", addr: str = CONTROL) -> list[str]:
    """`n` requests from `member` to addr:port (default: host1 to control's NodePort), each on a new
    connection: who answered."""
    return json.loads(lab.exec(member, "python3", "-c", NEW_CONNECTIONS, addr, str(port), str(n), timeout=120 * time_scale()).stdout)


def cluster_ip(lab: Lab, service: str) -> str:
    """A service's cluster IP (`get service NAME -o json`)."""
    return json.loads(lab.run("get", "service", service, "-o", "json").stdout)["spec"]["clusterIP"]


def pods(lab: Lab) -> dict[str, dict]:
    """`get pods -o json`: name -> Pod object."""
    return {o["metadata"]["name"]: o for o in json.loads(lab.run("get", "pods", "-o", "json").stdout)["items"]}


def endpoints(lab: Lab, service: str) -> dict[str, dict]:
    """The service's EndpointSlice endpoints (`get endpointslices -o json`): pod name -> conditions."""
    items = json.loads(lab.run("get", "endpointslices", "-o", "json").stdout)["items"]
    es = next(o for o in items if o["metadata"]["labels"]["kubernetes.io/service-name"] == service)
    return {e["targetRef"]["name"]: e["conditions"] for e in es["endpoints"]}


def web_pods(lab: Lab) -> list[str]:
    """The Deployment's pods that are not terminating."""
    return [n for n, o in pods(lab).items() if n.startswith("web-") and "deletionTimestamp" not in o["metadata"]]


def reapers(lab: Lab) -> list[int]:
    """The lab's grace reaper processes."""
    return [p for p in processes_with_lab_arg(lab.name) if b"netns_lab.apps.grace" in Path(f"/proc/{p}/cmdline").read_bytes()]


def grace(seconds: int) -> str:
    """A grace period long enough for the test's own CLI calls on this machine (time_scale)."""
    return str(round(seconds * time_scale()))


def test_open_connection_survives_termination(glab: Lab) -> None:
    """(1) A keep-alive connection to a pod goes on exchanging requests after the pod is marked terminating."""
    client = subprocess.Popen([*CLI, "exec", "--name", glab.name, "host1", "--", "python3", "-c", KEEPALIVE,
                               CONTROL, str(WEB), grace(15)], stdout=subprocess.PIPE, text=True)
    try:
        # the pod the connection landed on, from the pods' own socket tables
        assert wait_for(lambda: len(connection_pods(glab)) == 1, timeout=30 * time_scale(), interval=0.3), \
            "no keep-alive connection"
        target = connection_pods(glab)[0]
        out = glab.run("delete", "pod", target, "--grace-period", grace(20)).stdout
        t_marked = time.time()
        assert "Terminating until" in out, out
        assert pods(glab)[target]["metadata"]["deletionTimestamp"]
    finally:
        stdout, _ = client.communicate(timeout=120 * time_scale())
    lines = [line.split(" ", 1) for line in stdout.splitlines()]
    assert not any(who.startswith("ERR") for _, who in lines), ("the open connection broke", lines[-3:])
    after = [(float(t), who) for t, who in lines if float(t) > t_marked]
    assert len(after) >= 10, ("too few answers after the pod was marked terminating", lines[-3:])
    assert {who for _, who in after} == {target}, after[:3]


def connection_pods(lab: Lab) -> list[str]:
    """The web pods holding an established connection on their port 8080 (host1's keep-alive one)."""
    return [p for p in web_pods(lab)
            if lab.exec(p, "ss", "-Htn", "state", "established", "( sport = :8080 )").stdout.strip()]


def test_new_connections_avoid_a_terminating_pod(glab: Lab) -> None:
    """(2) During the grace period, new connections never reach the terminating pod; the others serve them."""
    victim = web_pods(glab)[0]
    glab.run("delete", "pod", victim, "--grace-period", grace(15))
    conditions = endpoints(glab, "web")
    assert conditions[victim] == {"ready": False, "serving": True, "terminating": True}
    assert all(conditions[n] == {"ready": True, "serving": True, "terminating": False} for n in web_pods(glab))
    assert "Terminating" in glab.run("get", "pods").stdout
    answers = new_connections(glab, WEB, 30)
    assert not [a for a in answers if a.startswith("ERR")], answers
    assert victim not in answers, ("a new connection reached the terminating pod", answers)
    assert len(set(answers)) == 2, answers  # the other pod and the replacement both serve
    # a host-networked client on a node (connect-time LB in the eBPF modes, `exec` joins the node's
    # cgroup) to the ClusterIP: the same selection set
    from_node = new_connections(glab, 80, 20, member="control", addr=cluster_ip(glab, "web"))
    assert not [a for a in from_node if a.startswith("ERR")] and victim not in from_node, from_node


def test_only_terminating_endpoints_still_serve(glab: Lab) -> None:
    """(3) A service whose only endpoint is terminating still answers: kube-proxy's fallback."""
    old_ip = glab.pod_ip("solo")
    glab.run("delete", "pod", "solo", "--grace-period", grace(12))
    assert endpoints(glab, "solo") == {"solo": {"ready": False, "serving": True, "terminating": True}}
    answers = new_connections(glab, SOLO, 10)
    assert answers == ["solo"] * 10, answers
    assert glab.pod_ip("solo") == old_ip  # the terminating pod itself served
    # then the bare pod goes as `delete pod` does here: recreated under its name with a new address
    assert wait_for(lambda: glab.pod_ip("solo") != old_ip, timeout=90 * time_scale(), interval=0.5), "solo was not recreated"
    assert endpoints(glab, "solo") == {"solo": {"ready": True, "serving": True, "terminating": False}}
    assert new_connections(glab, SOLO, 3) == ["solo"] * 3


def test_pod_goes_after_its_grace_period_and_nothing_is_left(glab: Lab) -> None:
    """(4) The pod goes without another command; no reaper is left; `down` mid-grace leaves no process."""
    victim = web_pods(glab)[0]
    netns = glab.netns(victim)
    glab.run("delete", "pod", victim, "--grace-period", grace(5))
    assert victim in pods(glab)
    assert wait_for(lambda: victim not in pods(glab), timeout=90 * time_scale(), interval=0.5), \
        "the pod outlived its grace period"
    assert netns not in lab_namespaces(glab.name)
    assert victim not in endpoints(glab, "web")
    assert wait_for(lambda: not reapers(glab), timeout=30 * time_scale(), interval=0.2), \
        "the reaper outlived the last terminating pod"
    assert len(web_pods(glab)) == 2 and set(new_connections(glab, WEB, 5)) <= set(web_pods(glab))
    # a pod already terminating, deleted with --force --grace-period 0, goes at once
    going = web_pods(glab)[0]
    going_ns = glab.netns(going)
    glab.run("delete", "pod", going, "--grace-period", "300")
    assert "Terminating" in glab.run("get", "pods", going).stdout
    glab.run("delete", "pod", going, "--force", "--grace-period", "0")
    assert going not in pods(glab) and going_ns not in lab_namespaces(glab.name)
    assert wait_for(lambda: not reapers(glab), timeout=30 * time_scale(), interval=0.2), \
        "the reaper outlived the last terminating pod"
    # a lab taken down while a pod terminates leaves no process (its reaper included)
    glab.run("delete", "pod", web_pods(glab)[0], "--grace-period", "300")
    assert reapers(glab), "no grace reaper runs during a grace period"
    glab.api().down()
    assert processes_with_lab_arg(glab.name) == []
    assert lab_namespaces(glab.name) == []
