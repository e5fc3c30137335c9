"""Lab state file (atomic JSON) and the per-lab lock."""

from __future__ import annotations

import os
import threading
import time

import pytest

from netns_lab import state
from netns_lab.errors import LabError


def test_save_then_load_round_trips_and_leaves_no_temp_files(tmp_path) -> None:
    path = tmp_path / "lab" / "state.json"
    doc = {"lab": "t", "status": "building", "pods": {"customer": {"pid": 12}}}
    state.save("t", doc, path=path)
    loaded = state.load("t", path=path)
    assert loaded["pods"] == {"customer": {"pid": 12}}
    assert "updated" in loaded
    assert os.listdir(path.parent) == ["state.json"]


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


@pytest.mark.parametrize(
    "mode,enabled,ext",
    [("kube-proxy", False, "Tunnel"), ("tunnel", True, "Tunnel"), ("dsr", True, "DSR")],
)
def test_felix_config_per_mode(mode: str, enabled: bool, ext: str) -> None:
    felix = state.felix_for_mode(mode)
    assert felix["bpfEnabled"] is enabled
    assert felix["bpfExternalServiceMode"] == ext
    assert felix["bpfKubeProxyIptablesCleanupEnabled"] is True
    assert felix["bpfDSROptoutCIDRs"] == []


def test_felix_config_keeps_user_fields() -> None:
    felix = state.felix_for_mode("dsr", {"bpfKubeProxyIptablesCleanupEnabled": False, "bpfDSROptoutCIDRs": ["10.0.0.0/8"]})
    assert felix["bpfKubeProxyIptablesCleanupEnabled"] is False
    assert felix["bpfDSROptoutCIDRs"] == ["10.0.0.0/8"]
    assert felix["bpfExternalServiceMode"] == "DSR"
