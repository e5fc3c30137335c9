"""Lab life cycle: `down` leaves nothing, `down --all` after a killed `up`, labs side by side, locking, YAML topologies."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from netns_lab import cgroups, kubeproxy, naming

from .conftest import (
    CLI,
    Lab,
    Sandbox,
    assert_lab_gone,
    cli,
    lab_namespaces,
    ns_inodes,
    processes_in,
    processes_with_lab_arg,
    root_snapshot,
    unique_lab,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.lab]


def make_pin(prefix: list[str], lab: str, node: str = "control", pin_dir: Path | None = None) -> None:
    """Pin a real BPF map where the eBPF dataplane pins its objects, as a stand-in for a loaded datapath."""
    pin_dir = pin_dir or naming.bpf_dir(lab) / node
    subprocess.run([*prefix, "mkdir", "-p", str(pin_dir)], check=True)
    subprocess.run(
        [*prefix, "bpftool", "map", "create", str(pin_dir / "t1pin"), "type", "array", "key", "4", "value", "4",
         "entries", "1", "name", "t1pin"],
        check=True,
    )


def test_down_all_sweeps_test_harness_pins(sandbox) -> None:
    """A BPF test run killed before its teardown leaves pins under SIM_PIN_ROOT: `down --all` removes them."""
    from ebpf_nodeport.testrun import SIM_PIN_ROOT

    make_pin(sandbox.prefix, "", pin_dir=Path(SIM_PIN_ROOT) / "utkilled")
    assert sandbox.path(Path(SIM_PIN_ROOT) / "utkilled" / "t1pin").exists()
    down = sandbox.cli("down", "--all")
    assert "test harness' leftover pins" in down.stdout
    assert not sandbox.path(SIM_PIN_ROOT).exists()


def test_down_leaves_nothing_and_root_namespace_untouched(lab_factory) -> None:
    before = root_snapshot()
    lab = lab_factory()
    make_pin([], lab.name)
    names = lab_namespaces(lab.name)
    assert len(names) == 9  # fabric, 3 nodes, host1, 4 pods
    inodes = ns_inodes([naming.netns_path(n) for n in names])
    pids = [p["pid"] for p in lab.status()["pods"]]
    assert set(pids) <= set(processes_in(inodes))  # the apps live in the pod namespaces
    assert root_snapshot() == before  # a running lab adds nothing to the root namespace

    out = lab.run("down").stdout
    assert f"lab {lab.name} removed: 9 namespaces, 4 processes, BPF pins" in out
    assert_lab_gone(lab.name, inodes, pids)
    assert root_snapshot() == before

    again = lab.run("down", check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"netns-lab: error: no lab named '{lab.name}'"


def test_two_labs_run_side_by_side_without_interfering(lab_factory) -> None:
    a = lab_factory(tag="a")
    b = lab_factory(tag="b")
    count = {lab.name: {p: len(lab.log_entries(p)) for p in ("customer",)} for lab in (a, b)}

    assert "Spike Curtis" in a.curl("198.19.0.1:30180")
    assert len(a.log_entries("customer")) == count[a.name]["customer"] + 1
    assert len(b.log_entries("customer")) == count[b.name]["customer"]  # same addresses, separate worlds

    assert "Spike Curtis" in b.curl("198.19.0.2:30180")
    assert len(b.log_entries("customer")) == count[b.name]["customer"] + 1
    assert len(a.log_entries("customer")) == count[a.name]["customer"] + 1

    a.run("down")
    assert lab_namespaces(a.name) == []
    assert "Spike Curtis" in b.curl("198.19.0.1:30180")  # b survives a's removal
    assert b.status()["status"] == "ready"


@pytest.mark.parametrize(
    "kill_when,drop_state",
    [("namespaces", False), ("apps", False), ("apps", True)],
    ids=["during-namespaces", "after-apps-started", "after-apps-started-state-lost"],
)
def test_down_all_cleans_a_lab_whose_up_was_killed(sandbox: Sandbox, kill_when: str, drop_state: bool) -> None:
    lab = unique_lab("k")
    sandbox.labs.append(lab)
    netns_dir = sandbox.path(naming.NETNS_DIR)
    ready = {
        "namespaces": lambda: len(lab_namespaces(lab, netns_dir)) >= 3,
        # a log file exists just before its app is spawned: wait for the process itself
        "apps": lambda: any(sandbox.path(naming.logs_dir(lab)).glob("customer-*.log")) and bool(processes_with_lab_arg(lab)),
    }[kill_when]

    up = sandbox.popen_cli("up", "--name", lab)
    try:
        assert wait_for(ready, timeout=30), "up never reached the point to kill it"
    finally:
        up.kill()
        output = up.communicate()[0]
    assert up.returncode == -9, f"up finished before it was killed:\n{output}"

    names = lab_namespaces(lab, netns_dir)
    assert names
    inodes = ns_inodes([netns_dir / n for n in names])
    app_pids = processes_with_lab_arg(lab)
    if kill_when == "apps":
        assert app_pids, "apps were started: they must be running, detached, after up died"
    make_pin(sandbox.prefix, lab)
    if drop_state:
        shutil.rmtree(sandbox.path(naming.run_dir(lab)))

    listed = {r["lab"]: r for r in json.loads(sandbox.cli("list", "-o", "json").stdout)}
    assert listed[lab]["status"] == ("no state" if drop_state else "building")

    refused = sandbox.cli("up", "--name", lab, check=False)
    assert refused.returncode == 1
    assert f"down --name {lab}" in refused.stderr

    down = sandbox.cli("down", "--all")
    assert f"lab {lab} removed: {len(names)} namespaces" in down.stdout
    assert lab_namespaces(lab, netns_dir) == []
    assert processes_in(inodes) == []
    assert processes_with_lab_arg(lab) == []
    assert not sandbox.path(naming.bpf_dir(lab)).exists()
    assert not sandbox.path(naming.run_dir(lab)).exists()
    assert not sandbox.path(naming.RUN_ROOT).exists()  # --all leaves the machine as it found it
    assert not sandbox.path(naming.BPF_ROOT).exists()

    # everything is really free: the same lab comes up again
    sandbox.cli("up", "--name", lab)
    status = json.loads(sandbox.cli("status", "--name", lab, "-o", "json").stdout)
    assert status["status"] == "ready"


def test_concurrent_ups_of_one_lab_are_serialised() -> None:
    name = unique_lab("c")
    procs: list[subprocess.Popen] = []
    try:
        procs = [
            subprocess.Popen([*CLI, "up", "--name", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        built = [o for o in outs if f"lab {name} is up" in o]
        skipped = [o for o in outs if "already up" in o]
        assert len(built) == 1 and len(skipped) == 1, outs
        assert len(lab_namespaces(name)) == 9
    finally:
        for p in procs:  # communicate(timeout) does not kill: never leave an `up` behind
            if p.poll() is None:
                p.kill()
                p.wait()
        cli("down", "--name", name, check=False)


TWO_NODE = (Path(__file__).resolve().parents[1] / "topologies" / "two-node.yaml").read_text()


def test_up_from_a_yaml_topology(lab_factory, tmp_path) -> None:
    f = tmp_path / "tiny.yaml"
    f.write_text(TWO_NODE)
    lab = lab_factory(topology=f)
    st = lab.status()
    assert [n["name"] for n in st["nodes"]] == ["alpha", "beta"]
    page = lab.curl("198.19.0.22:31080", member="client")  # ingress on beta, backend on alpha
    assert "customer pod: web; summary pod: api; database pod: db" in page
    assert [e["client"] for e in lab.log_entries("web")] == ["198.19.0.22"]
    saved = kubeproxy.save(lab.netns("beta"))
    assert kubeproxy.ext_chain("shop/web:http", "tcp") in saved
    # the same file again: already up; a different topology: refused
    assert "already up" in lab.run("up", "--topology", str(f)).stdout
    assert lab.run("up", "--topology", "/dev/null", check=False).returncode == 1


def test_bad_topology_file_changes_nothing(tmp_path) -> None:
    name = unique_lab("e")
    f = tmp_path / "bad.yaml"
    f.write_text(TWO_NODE.replace("node: beta, app: summary", "node: gamma, app: summary"))
    proc = cli("up", "--name", name, "--topology", str(f), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"netns-lab: error: {f}:line 12: topology: pods[1].node: unknown node 'gamma'"
    ]
    assert lab_namespaces(name) == []
    assert not naming.run_dir(name).exists()


def test_unknown_lab_errors(tmp_path) -> None:
    name = unique_lab("n")
    for args in (["status"], ["exec", "host1", "--", "true"], ["logs", "customer"], ["down"]):
        proc = cli(args[0], "--name", name, *args[1:], check=False)
        assert proc.returncode == 1, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"netns-lab: error: no lab named '{name}'"), (args, lines)
    assert not naming.run_dir(name).exists()


def test_status_json_matches_namespaces_on_disk(lab_factory) -> None:
    """`status -o json` is machine-readable and agrees with the namespaces on disk."""
    lab: Lab = lab_factory()
    st = lab.status()
    on_disk = set(lab_namespaces(lab.name))
    recorded = {n["netns"] for n in st["nodes"] + st["hosts"]} | {naming.netns(lab.name, p["name"]) for p in st["pods"]}
    assert recorded | {naming.netns(lab.name, naming.FABRIC)} == on_disk


def test_node_cgroups_are_joined_by_exec_and_removed_by_down(lab_factory) -> None:
    """eBPF mode gives every node a cgroup (connect-time LB); `exec NODE` runs in it; `down` removes them."""
    lab = lab_factory("tunnel", tag="c")
    top = cgroups.lab_dir(lab.name)
    assert sorted(d.name for d in top.iterdir() if d.is_dir()) == ["control", "node1", "node2"]
    line = lab.exec("node1", "cat", "/proc/self/cgroup").stdout
    assert f"/{cgroups.TOP}/{lab.name}/node1" in line
    lab.run("down")
    assert not top.exists()
