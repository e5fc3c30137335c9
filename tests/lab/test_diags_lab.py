"""`netns-lab diags` on a real eBPF lab: every promised artefact is saved and holds the lab's state.

One tunnel-mode lab, one curl from host1 to the NodePort, then diags: the files must show that
curl (conntrack entry in control's maps.json, the access log line, counters), the attached
programs (tc filter), the kube-proxy-free iptables of a node, the state file and the kernel log.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Lab, cli, running_lab

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

CLIENT, FRONTEND = "198.19.15.254", "198.19.0.1:30180"


@pytest.fixture(scope="module")
def lab_with_flow() -> Iterator[Lab]:
    with running_lab("dg", "tunnel") as lab:
        lab.curl(f"http://{FRONTEND}/")
        yield lab


@pytest.fixture(scope="module")
def diags_dir(lab_with_flow: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("diags") / "out"
    lab_with_flow.run("diags", "--out", str(out))
    return out


# (file under <lab>/ or host/, text it must contain; "" = must exist); {customer} is that pod's name
EXPECTED_TEXT = [
    ("{lab}/state.json", '"bpfExternalServiceMode": "Tunnel"'),
    ("{lab}/logs/{customer}.log", CLIENT),
    ("{lab}/control/ip-addr.txt", "198.19.0.1/20"),
    ("{lab}/control/ip-route.txt", "198.19.16.64/26"),
    ("{lab}/control/ip-link.txt", "veth"),
    ("{lab}/control/tc-filter.txt", "direct-action"),
    ("{lab}/node1/tc-filter.txt", "direct-action"),
    ("{lab}/control/iptables-save.txt", ""),   # eBPF mode: no kube-proxy rules, the file may be empty
    ("{lab}/control/nft-ruleset.txt", ""),
    ("{lab}/host1/ip-addr.txt", CLIENT),
    ("host/bpffs.txt", "/control/ct"),
    ("host/uname.txt", "Linux"),
]


@pytest.mark.parametrize("rel,text", EXPECTED_TEXT, ids=[r for r, _ in EXPECTED_TEXT])
def test_file_holds(diags_dir: Path, lab_with_flow: Lab, rel: str, text: str) -> None:
    path = diags_dir / rel.format(lab=lab_with_flow.name, customer=lab_with_flow.pod("customer"))
    assert path.is_file(), f"diags did not save {rel}"
    assert text in path.read_text(), f"{rel} lacks {text!r}"


def test_maps_json_has_the_flow_and_counters(diags_dir: Path, lab_with_flow: Lab) -> None:
    doc = json.loads((diags_dir / lab_with_flow.name / "control" / "maps.json").read_text())
    assert set(doc) >= {"nat", "backends", "conntrack", "counters", "routes", "config"}
    clients = {e.get("client", "").split(":")[0] for e in doc["conntrack"]["entries"]}
    assert CLIENT in clients
    assert any(c.get("packets", c.get("count", 0)) for c in doc["counters"]["counters"])


def test_manifest_lists_files_and_no_errors(diags_dir: Path, lab_with_flow: Lab) -> None:
    manifest = json.loads((diags_dir / "manifest.json").read_text())
    assert manifest["labs"] == [lab_with_flow.name]
    assert manifest["errors"] == []
    assert f"{lab_with_flow.name}/node2/maps.json" in manifest["files"]
    assert (diags_dir / "host" / "dmesg-tail.txt").is_file()


@pytest.mark.parametrize("case", ["nonempty_out", "unknown_lab"])
def test_bad_input_one_line_nothing_written(tmp_path: Path, lab_with_flow: Lab, case: str) -> None:
    out = tmp_path / "out"
    if case == "nonempty_out":
        out.mkdir()
        (out / "keep").write_text("x")
        proc = lab_with_flow.run("diags", "--out", str(out), check=False)
        assert sorted(p.name for p in out.iterdir()) == ["keep"]
    else:
        proc = cli("diags", "--name", "nosuchlab", "--out", str(out), check=False)
        assert not out.exists()
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
