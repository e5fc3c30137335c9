"""Lab state file (atomic JSON) and the per-lab lock."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from netns_lab import state
from netns_lab.errors import LabError
from netns_lab.felix import FelixConfig
from netns_lab.state import LabState
from netns_lab.topology import default_topology, plan


def new_state(mode: str = "kube-proxy") -> LabState:
    topo = default_topology()
    return LabState.new("t", topo, plan(topo), mode)


def test_save_then_load_round_trips_and_leaves_no_temp_files(tmp_path) -> None:
    path = tmp_path / "lab" / "state.json"
    st = new_state("dsr")
    st.pods["customer"].pid = 12
    state.save("t", st, path=path)
    loaded = state.load("t", path=path)
    assert loaded == st and loaded.updated
    assert loaded.pods["customer"].pid == 12
    assert os.listdir(path.parent) == ["state.json"]
    doc = json.loads(path.read_text())  # plain, readable JSON in the documented shape
    assert doc["version"] == state.STATE_VERSION and doc["pods"]["customer"]["pid"] == 12
    assert doc["felix"]["bpfExternalServiceMode"] == "DSR" and "mode" not in doc


def test_load_missing_is_none_and_corrupt_is_an_error(tmp_path) -> None:
    assert state.load("t", path=tmp_path / "nope.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabError, match="cannot read lab state"):
        state.load("t", path=bad)


def test_lock_excludes_a_second_holder(tmp_path) -> None:
    path = tmp_path / "lab" / "lock"
    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with state.lock("t", path=path):
            holding.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    assert holding.wait(5)
    with pytest.raises(LabError, match="is busy"):
        with state.lock("t", timeout=0.2, path=path):
            pass
    release.set()
    t.join()
    with state.lock("t", timeout=1, path=path):
        pass


def test_lock_follows_a_replaced_lock_file(tmp_path) -> None:
    """`down` deletes the lab directory (lock included) while holding the lock; a waiter must not
    end up holding a lock on the deleted file while a third process locks a new one."""
    path = tmp_path / "lab" / "lock"
    acquired: list[float] = []

    def waiter() -> None:
        with state.lock("t", timeout=5, path=path):
            acquired.append(time.monotonic())
            # while we hold it, nobody else may
            with pytest.raises(LabError):
                with state.lock("t", timeout=0.1, path=path):
                    pass

    with state.lock("t", path=path):
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.2)
        os.unlink(path)
        os.rmdir(path.parent)
    t.join()
    assert acquired
    assert path.exists()


@pytest.mark.parametrize("mode", ["kube-proxy", "tunnel", "dsr"])
def test_the_mode_follows_from_the_felix_spec(mode: str) -> None:
    st = new_state(mode)
    assert st.mode == mode
    st.felix = FelixConfig(bpfEnabled=False)
    assert st.mode == "kube-proxy"


def test_the_plan_has_recreated_pods_at_their_new_address() -> None:
    st = new_state()
    st.pods["customer"].ip = "198.19.16.67"
    for sp in st.services[0].ports:
        for b in sp.backends:
            b.ip = "198.19.16.67"
    topo, p = st.plan()
    assert str(p.pod_ips["customer"]) == "198.19.16.67"
    assert {b.ip for b in p.endpoints[("yaobank/customer", "http")]} == {"198.19.16.67"}
    assert st.spec() == topo


def test_a_version_1_file_is_converted(tmp_path) -> None:
    """Version 1 stored the mode beside the felix spec and an always-empty sysctl record."""
    path = tmp_path / "state.json"
    doc = new_state("tunnel").to_dict()
    doc.update(version=1, mode="tunnel")
    doc["dataplane"]["sysctls"] = {}
    path.write_text(json.dumps(doc))
    st = state.load("t", path=path)
    assert st.version == state.STATE_VERSION and st.mode == "tunnel"
    assert "sysctls" not in st.to_dict()["dataplane"]


def test_a_version_2_file_is_converted(tmp_path) -> None:
    """Version 2 (before manifests) had no pod `created`: its pods read as made with the lab, and are saved as version 4."""
    path = tmp_path / "state.json"
    doc = new_state().to_dict()
    doc["version"] = 2
    for rec in doc["pods"].values():
        del rec["created"]
    path.write_text(json.dumps(doc))
    st = state.load("t", path=path)
    assert st.version == state.STATE_VERSION == 4 and all(p.created is None for p in st.pods.values())
    assert st.select_pods((), "app=summary", "yaobank") == ["summary-1", "summary-2"]
    state.save("t", st, path=path)
    assert json.loads(path.read_text())["version"] == 4


@pytest.mark.parametrize("version,mode", [(1, "kube-proxy"), (2, "tunnel"), (3, "kube-proxy"), (3, "dsr")])
def test_an_older_file_without_kube_proxy_mode_reads_as_iptables(tmp_path, version, mode) -> None:
    """Versions 1-3 knew one kube-proxy backend: their kubeproxy record reads as mode iptables, saved as version 4."""
    path = tmp_path / "state.json"
    doc = new_state(mode).to_dict()
    doc["version"] = version
    del doc["kubeproxy"]["mode"]
    path.write_text(json.dumps(doc))
    st = state.load("t", path=path)
    assert st.kubeproxy.mode == "iptables" and st.mode == mode
    state.save("t", st, path=path)
    saved = json.loads(path.read_text())
    assert saved["version"] == 4 and saved["kubeproxy"]["mode"] == "iptables"


@pytest.mark.parametrize("mode,felix_mode,proxy_mode,bpf", [
    ("kube-proxy", "kube-proxy", "iptables", False),
    ("kube-proxy-nft", "kube-proxy", "nftables", False),
    ("tunnel", "tunnel", "iptables", True),
    ("dsr", "dsr", "iptables", True),
])
def test_the_lab_mode_is_felix_and_kube_proxy_modes(tmp_path, mode, felix_mode, proxy_mode, bpf) -> None:
    """kube-proxy-nft is bpfEnabled false (Felix) with KubeProxyConfiguration mode nftables; it survives a save."""
    st = new_state(mode)
    assert (st.felix.mode, st.kubeproxy.mode, st.felix.bpfEnabled) == (felix_mode, proxy_mode, bpf)
    assert st.mode == mode and state.split_mode(mode)[0] == felix_mode
    state.save("t", st, path=tmp_path / "state.json")
    assert state.load("t", path=tmp_path / "state.json").mode == mode


def test_an_eBPF_mode_keeps_kube_proxys_nftables_mode() -> None:
    """Felix in an eBPF mode does not change kube-proxy's own setting: back to bpfEnabled false is nftables again."""
    st = new_state("kube-proxy-nft")
    st.felix = FelixConfig(bpfEnabled=True)
    assert st.mode == "tunnel" and st.kubeproxy.mode == "nftables"
    st.felix = FelixConfig(bpfEnabled=False)
    assert st.mode == "kube-proxy-nft"


def test_an_unknown_kube_proxy_mode_is_malformed(tmp_path) -> None:
    path = tmp_path / "state.json"
    doc = new_state().to_dict()
    doc["kubeproxy"]["mode"] = "ipvs"
    path.write_text(json.dumps(doc))
    with pytest.raises(LabError, match=r"is malformed: .*kubeproxy.mode 'ipvs' is not one of iptables, nftables") as exc:
        state.load("t", path=path)
    assert "\n" not in str(exc.value)


def test_a_pod_made_live_keeps_its_creation_time(tmp_path) -> None:
    path = tmp_path / "state.json"
    st = new_state()
    st.pods["customer"].created = "2026-11-30T12:00:00+0000"
    state.save("t", st, path=path)
    assert state.load("t", path=path).pods["customer"].created == "2026-11-30T12:00:00+0000"


@pytest.mark.parametrize("version", [None, 0, 99])
def test_another_version_is_refused_in_one_line(tmp_path, version) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({**new_state().to_dict(), "version": version}))
    with pytest.raises(LabError, match=rf"is version {version}, this netns-lab reads versions 1, 2, 3, 4:") as exc:
        state.load("t", path=path)
    assert "\n" not in str(exc.value)


def test_a_malformed_state_is_one_line(tmp_path) -> None:
    path = tmp_path / "state.json"
    doc = new_state().to_dict()
    del doc["members"]
    path.write_text(json.dumps(doc))
    with pytest.raises(LabError, match="is malformed: KeyError"):
        state.load("t", path=path)


def test_the_labs_ebpf_modes_are_the_datapaths() -> None:
    """netns_lab's eBPF modes (from the felix model) are exactly the ones ebpf_nodeport implements."""
    from ebpf_nodeport.abi import EBPF_MODES

    assert state.EBPF_MODES == EBPF_MODES
